package openssh

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/nix-hive/nix-hive/hostkey"
	"github.com/nix-hive/nix-hive/internal/testenv"
	"github.com/nix-hive/nix-hive/lab"
	"github.com/nix-hive/nix-hive/lab/labtest"
	"github.com/nix-hive/nix-hive/transport"
)

// hermetic keeps the user's real agent, keys and configs out of a test.
func hermetic(t *testing.T) string {
	t.Helper()
	home := t.TempDir()
	t.Setenv("HOME", home)
	t.Setenv("SSH_AUTH_SOCK", "")
	return home
}

// hostsOf is cfg resolved, as a pool made of it resolves it.
func hostsOf(t *testing.T, cfg transport.Config) *transport.Hosts {
	t.Helper()
	p, err := transport.NewPool(cfg)
	if err != nil {
		t.Fatalf("NewPool: %v", err)
	}
	t.Cleanup(func() { p.Close() })
	return p.Hosts()
}

// hostKey is a new host key in authorized_keys form.
func hostKey(t *testing.T) string {
	t.Helper()
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	k, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return hostkey.AuthorizedKey(k)
}

// needSSH returns the OpenSSH client or skips (fails under CI).
func needSSH(t *testing.T) string {
	t.Helper()
	return testenv.Tool(t, "ssh", "apt-get install openssh-client")
}

// sshG runs `ssh -G -F config name` and returns its settings; keys that
// occur several times (identityfile) are joined with "\n".
func sshG(t *testing.T, ssh, config, name string) map[string]string {
	t.Helper()
	cmd := exec.Command(ssh, "-G", "-F", config, name)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("ssh -G %s: %v: %s", name, err, stderr.String())
	}
	m := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), " ")
		if old, ok := m[k]; ok {
			v = old + "\n" + v
		}
		m[k] = v
	}
	return m
}

func writeFile(t *testing.T, path, content string) string {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestConfigAgreesWithOpenSSH: for every endpoint, ssh -G on the
// generated config yields the host, user, port and jump chain that the Go
// client uses (Resolve), with the user's own config in play.
func TestConfigAgreesWithOpenSSH(t *testing.T) {
	ssh := needSSH(t)
	home := hermetic(t)
	dir := t.TempDir()
	userConfig := writeFile(t, filepath.Join(home, ".ssh", "config"), `
Host www-*
	User alice
	Port 2200
Host db-1
	HostName db.internal
Host *
	User bob
	ProxyJump elsewhere
	Compression yes
	ServerAliveCountMax 7
`)
	dbKey := filepath.Join(dir, "my keys", "db key")
	cfg := transport.Config{
		UserConfig:      userConfig,
		KnownHostsFiles: []string{filepath.Join(dir, "user known_hosts")},
		Endpoints: map[string]transport.Endpoint{
			"portico": {Host: "203.0.113.4"},
			"www-1":   {Host: "10.22.0.8", Jump: "portico"},
			"www-2":   {Host: "10.22.0.9", Jump: "www-1", User: "root", Port: 22},
			"db-1":    {Jump: "www-2", Port: 2222, Options: map[string]string{"IdentityFile": dbKey, "ServerAliveInterval": "30"}},
			"v6":      {Host: "fe80::1%eth0", User: "deploy"},
		},
	}
	p := hostsOf(t, cfg)
	genKnown := filepath.Join(dir, "known_hosts")
	var buf bytes.Buffer
	if err := WriteConfig(&buf, p, genKnown); err != nil {
		t.Fatal(err)
	}
	config := writeFile(t, filepath.Join(dir, "ssh_config"), buf.String())
	t.Logf("generated config:\n%s", buf.String())

	want := map[string]transport.Effective{
		"portico": {HostName: "203.0.113.4", User: "bob", Port: 22},
		"www-1":   {HostName: "10.22.0.8", User: "alice", Port: 2200, JumpChain: []string{"portico"}},
		"www-2":   {HostName: "10.22.0.9", User: "root", Port: 22, JumpChain: []string{"portico", "www-1"}},
		"db-1":    {HostName: "db.internal", User: "bob", Port: 2222, JumpChain: []string{"portico", "www-1", "www-2"}},
		"v6":      {HostName: "fe80::1%eth0", User: "deploy", Port: 22},
	}
	for name, w := range want {
		t.Run(name, func(t *testing.T) {
			got, err := p.Resolve(name)
			if err != nil {
				t.Fatal(err)
			}
			if got.HostName != w.HostName || got.User != w.User || got.Port != w.Port || !slices.Equal(got.JumpChain, w.JumpChain) {
				t.Errorf("Resolve(%s) = %+v; want %+v", name, got, w)
			}
			g := sshG(t, ssh, config, name)
			port, _ := strconv.Atoi(g["port"])
			if g["hostname"] != got.HostName || g["user"] != got.User || port != got.Port {
				t.Errorf("ssh -G: hostname %q user %q port %q; Go client: %q %q %d", g["hostname"], g["user"], g["port"], got.HostName, got.User, got.Port)
			}
			// Follow ProxyJump like ssh does, each hop with its own block.
			var chain []string
			for hop := g["proxyjump"]; hop != "" && hop != "none"; hop = sshG(t, ssh, config, hop)["proxyjump"] {
				chain = append([]string{hop}, chain...)
				if len(chain) > 10 {
					t.Fatalf("ssh -G jump chain does not end: %v", chain)
				}
			}
			if !slices.Equal(chain, got.JumpChain) {
				t.Errorf("ssh -G jump chain %v; Go client %v", chain, got.JumpChain)
			}
			if g["hostkeyalias"] != name {
				t.Errorf("hostkeyalias = %q; want %q", g["hostkeyalias"], name)
			}
			if g["stricthostkeychecking"] != "true" {
				t.Errorf("stricthostkeychecking = %q; want true", g["stricthostkeychecking"])
			}
			// Accepted keys first (OpenSSH's accept-new writes to the
			// first file), then the generated one, then the user's.
			accepted := filepath.Join(home, ".ssh", "known_hosts")
			if want := strings.Join([]string{accepted, genKnown, cfg.KnownHostsFiles[0]}, " "); g["userknownhostsfile"] != want {
				t.Errorf("userknownhostsfile = %q; want accepted, generated, user files", g["userknownhostsfile"])
			}
		})
	}
	// The user's config still applies where the hive says nothing; the
	// bounds derived from ConnectTimeout and KeepAlive are nix-hive's.
	if g := sshG(t, ssh, config, "portico"); g["compression"] != "yes" {
		t.Errorf("compression = %q; the user's config was not included", g["compression"])
	} else if g["serveralivecountmax"] != "3" || g["serveraliveinterval"] != "15" || g["connecttimeout"] != strconv.Itoa(int(transport.DefaultConnectTimeout.Seconds())) {
		t.Errorf("serveralive %s x %s, connecttimeout %s; want 15 x 3 and transport.DefaultConnectTimeout from the pool's defaults",
			g["serveraliveinterval"], g["serveralivecountmax"], g["connecttimeout"])
	}
	g := sshG(t, ssh, config, "db-1")
	if !strings.Contains(g["identityfile"], dbKey) || g["serveraliveinterval"] != "30" {
		t.Errorf("db-1 extra options: identityfile %q serveraliveinterval %q", g["identityfile"], g["serveraliveinterval"])
	}
	if eff, _ := p.Resolve("db-1"); !slices.Equal(eff.IdentityFiles, []string{dbKey}) {
		t.Errorf("Go client identity files = %v; want [%s]", eff.IdentityFiles, dbKey)
	}
}

func TestWriteConfigAndKnownHosts(t *testing.T) {
	home := hermetic(t)
	key, port := hostKey(t), 2345
	userKnown := writeFile(t, filepath.Join(home, ".ssh", "known_hosts"),
		"[127.0.0.1]:"+strconv.Itoa(port)+" "+key+"\n")
	cfg := transport.Config{
		UserConfig: "none",
		Endpoints: map[string]transport.Endpoint{
			"pinned":  {Host: "192.0.2.1", HostKeys: []string{key + " comment"}, Options: map[string]string{"IdentityFile": `/a b/"q"`}},
			"learned": {Host: "127.0.0.1", Port: port},
			"unknown": {Host: "192.0.2.3"},
		},
	}
	var kh bytes.Buffer
	if err := WriteKnownHosts(&kh, hostsOf(t, cfg)); err != nil {
		t.Fatal(err)
	}
	wantKH := "learned " + key + "\npinned " + key + "\n"
	if kh.String() != wantKH {
		t.Errorf("WriteKnownHosts =\n%s\nwant\n%s", kh.String(), wantKH)
	}
	var sc bytes.Buffer
	if err := WriteConfig(&sc, hostsOf(t, cfg), "/tmp/gen known_hosts"); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"Host pinned\n\tHostName 192.0.2.1\n\tUser root\n\tPort 22\n\tProxyJump none\n\tHostKeyAlias pinned\n",
		// pinned: the pins alone, as the Go client checks them
		"\tUserKnownHostsFile \"/tmp/gen known_hosts\"\n\tStrictHostKeyChecking yes\n",
		// the others: accepted keys (by default the user's file), generated
		"HostKeyAlias unknown\n\tUserKnownHostsFile " + userKnown + " \"/tmp/gen known_hosts\"\n",
		"\tIdentityFile \"/a b/\\\"q\\\"\"\n",
	} {
		if !strings.Contains(sc.String(), want) {
			t.Errorf("WriteConfig output lacks %q:\n%s", want, sc.String())
		}
	}
	if strings.Contains(sc.String(), "Include") {
		t.Errorf("UserConfig none, yet the config includes one:\n%s", sc.String())
	}

	cfg.AcceptNewHostKeys = true
	cfg.UserConfig = ""
	sc.Reset()
	if err := WriteConfig(&sc, hostsOf(t, cfg), ""); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(sc.String(), "StrictHostKeyChecking accept-new") || !strings.HasSuffix(sc.String(), "\nHost *\n\tInclude ~/.ssh/config\n") {
		t.Errorf("accept-new config without a user config:\n%s", sc.String())
	}
	writeFile(t, filepath.Join(home, ".ssh", "config"), "")
	sc.Reset()
	if err := WriteConfig(&sc, hostsOf(t, cfg), ""); err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(sc.String(), "\nHost *\n\tInclude "+filepath.Join(home, ".ssh", "config")+"\n") {
		t.Errorf("config does not include the user's existing config by absolute path:\n%s", sc.String())
	}
}

// TestOpenSSHThroughGeneratedConfig: plain ssh, given only the generated
// config and known_hosts, reaches real sshd hosts, internal ones through
// the jump host, checking their pinned keys; a wrong pin stops it.
func TestOpenSSHThroughGeneratedConfig(t *testing.T) {
	ssh := needSSH(t)
	home := hermetic(t)
	l := labtest.New(t, lab.Config{Internal: 1})
	eps := map[string]transport.Endpoint{}
	for _, h := range l.Hosts {
		eps[h.Name] = transport.Endpoint{Name: h.Name, Host: h.Addr, Port: h.Port, User: "root", Jump: h.Jump,
			HostKeys: []string{h.HostKey}, Options: map[string]string{"IdentityFile": l.ClientKey}}
	}
	cfg := transport.Config{Endpoints: eps, UserConfig: "none", KnownHostsFiles: []string{},
		AcceptedKnownHosts: filepath.Join(t.TempDir(), "accepted")}
	dir := t.TempDir()
	config, khPath := filepath.Join(dir, "config"), filepath.Join(dir, "known_hosts")
	if err := Write(hostsOf(t, cfg), config, khPath); err != nil {
		t.Fatal(err)
	}
	run := func(name string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, ssh, "-F", config, "-o", "BatchMode=yes", name, "echo", "hello from", name)
		cmd.Env = []string{"HOME=" + home, "PATH=" + os.Getenv("PATH")}
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	var inner string
	for _, h := range l.Hosts {
		if h.Jump != "" {
			inner = h.Name
		}
		if out, err := run(h.Name); err != nil || out != "hello from "+h.Name+"\n" {
			t.Fatalf("ssh -F generated %s: %v: %q", h.Name, err, out)
		}
	}
	// A wrong pin must stop plain ssh too.
	ep := eps[inner]
	ep.HostKeys = []string{hostKey(t)}
	eps[inner] = ep
	if err := Write(hostsOf(t, cfg), config, khPath); err != nil {
		t.Fatal(err)
	}
	if out, err := run(inner); err == nil || !strings.Contains(out, "HOST IDENTIFICATION HAS CHANGED") {
		t.Fatalf("ssh with a wrong pinned key: err %v, output %q; want a refusal", err, out)
	}
}
