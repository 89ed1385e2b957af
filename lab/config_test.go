package lab

import (
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/nix-hive/nix-hive/internal/testenv"
	"github.com/nix-hive/nix-hive/nixcmd"
	"github.com/nix-hive/nix-hive/shell"
)

func TestHostNames(t *testing.T) {
	tests := []struct {
		name         string
		cfg          Config
		wantPlain    string
		wantInternal string
		wantJump     string
		wantErr      string
	}{
		{name: "defaults", cfg: Config{Hosts: 2}, wantPlain: "host-1 host-2"},
		{name: "names give the count", cfg: Config{Names: []string{"www", "db"}}, wantPlain: "www db"},
		{name: "jump default", cfg: Config{Internal: 2}, wantInternal: "int-1 int-2", wantJump: "portico"},
		{name: "jump named", cfg: Config{Hosts: 1, Internal: 1, JumpName: "bastion", InternalNames: []string{"db"}},
			wantPlain: "host-1", wantInternal: "db", wantJump: "bastion"},
		{name: "no hosts", cfg: Config{}, wantErr: "no hosts"},
		{name: "count and names disagree", cfg: Config{Hosts: 3, Names: []string{"a"}}, wantErr: "3 hosts but 1 names"},
		{name: "duplicate", cfg: Config{Names: []string{"a", "a"}}, wantErr: `"a" used twice`},
		{name: "jump name collides", cfg: Config{Names: []string{"portico"}, Internal: 1}, wantErr: "used twice"},
		{name: "unsafe name", cfg: Config{Names: []string{"a b"}}, wantErr: `host name "a b"`},
		{name: "leading dash", cfg: Config{Names: []string{"-oProxyCommand=x"}}, wantErr: "host name"},
		{name: "too many", cfg: Config{Hosts: 4000, Internal: 60}, wantErr: "at most 4048"},
		{name: "tree names collide", cfg: Config{Names: []string{"region"}, Tree: &TreeConfig{Racks: 1}}, wantErr: `"region" used twice`},
		{name: "tree and internal", cfg: Config{Internal: 1, Tree: &TreeConfig{Racks: 1}}, wantErr: "choose one"},
		{name: "too many racks", cfg: Config{Tree: &TreeConfig{Racks: 64}}, wantErr: "1 to 63 racks"},
		{name: "tree alone", cfg: Config{Tree: &TreeConfig{Racks: 1, PerRack: 1}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			plain, internal, jump, err := hostNames(tt.cfg)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want it to mention %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := strings.Join(plain, " "); got != tt.wantPlain {
				t.Errorf("plain = %q, want %q", got, tt.wantPlain)
			}
			if got := strings.Join(internal, " "); got != tt.wantInternal {
				t.Errorf("internal = %q, want %q", got, tt.wantInternal)
			}
			if jump != tt.wantJump {
				t.Errorf("jump = %q, want %q", jump, tt.wantJump)
			}
		})
	}
}

func TestPath(t *testing.T) {
	h := newHost(&Lab{Dir: "/lab"}, "a", "", "", "")
	tests := []struct{ in, want string }{
		{"/run/current-system", "/lab/hosts/a/run/current-system"},
		{"/nix/store", "/lab/hosts/a/nix/store"},
		{"/nix", "/lab/hosts/a/nix"},
		{"/etc/nix/nix.conf", "/lab/hosts/a/etc-nix/nix.conf"},
		{"/root/.ssh/known_hosts", "/lab/hosts/a/root/.ssh/known_hosts"},
		{"/etc/passwd", "/etc/passwd"},
		{"/nixos", "/nixos"},
		{"/rootfs/x", "/rootfs/x"},
		{"/run/../etc/nix", "/lab/hosts/a/etc-nix"},
		{"tmp/x", "/tmp/x"},
	}
	for _, tt := range tests {
		if got := h.Path(tt.in); got != tt.want {
			t.Errorf("Path(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

// TestNixString checks the quoting with real nix: what goes in comes out.
func TestNixString(t *testing.T) {
	testenv.Tool(t, "nix-instantiate", "apt-get install nix-bin")
	for _, s := range []string{`plain`, `with "quotes"`, `back\slash`, `${builtins.abort "x"}`, "two\nlines\ttab", `$${x}`, `$`} {
		out, err := exec.Command("nix-instantiate", "--eval", "--json", "--expr", nixcmd.String(s)).CombinedOutput()
		if err != nil {
			t.Fatalf("%q as %s: %v: %s", s, nixcmd.String(s), err, out)
		}
		if want := jsonString(s); strings.TrimSpace(string(out)) != want {
			t.Errorf("%q as %s evaluates to %s, want %s", s, nixcmd.String(s), out, want)
		}
	}
}

func jsonString(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`, "\t", `\t`)
	return `"` + r.Replace(s) + `"`
}

func TestShellQuote(t *testing.T) {
	for _, s := range []string{"plain", "it's", "a b", `$(rm -rf /)`, "'", "", "new\nline"} {
		out, err := exec.Command("/bin/sh", "-c", "printf %s "+shell.Quote(s)).Output()
		if err != nil {
			t.Fatal(err)
		}
		if string(out) != s {
			t.Errorf("shell.Quote(%q) came back as %q", s, out)
		}
	}
}

// TestSSHDConfig pins the settings the brief asks for; that sshd accepts
// them is proven by every test that starts a host.
func TestSSHDConfig(t *testing.T) {
	l := &Lab{Dir: "/lab"}
	h := newHost(l, "portico", "198.18.1.2", "", "", "198.18.1.2", "127.77.1.2")
	got := h.sshdConfig()
	for _, want := range []string{
		"ListenAddress 198.18.1.2:22\n",
		"ListenAddress 127.77.1.2:22\n",
		"HostKey /lab/hosts/portico/ssh_host_ed25519_key\n",
		"AuthorizedKeysFile /lab/authorized_keys\n",
		"PidFile /run/sshd.pid\n",
		"PermitRootLogin prohibit-password\n",
		"PasswordAuthentication no\n",
		"MaxSessions 200\n",
		"MaxStartups 200\n",
		"Subsystem sftp /usr/lib/openssh/sftp-server\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("sshd_config lacks %q:\n%s", want, got)
		}
	}
}

func TestNixDirs(t *testing.T) {
	sys := t.TempDir()
	other := t.TempDir()
	for _, d := range []string{sys, other} {
		if err := os.WriteFile(filepath.Join(d, "nix"), []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	empty := t.TempDir()
	hosts := []string{"a", "b", ""} // "" is the absent jump host
	tests := []struct {
		name    string
		cfg     Config
		want    map[string]string
		wantErr string
	}{
		{"one Nix for all", Config{Nix: sys}, map[string]string{"a": sys, "b": sys}, ""},
		{"a fleet mid-upgrade", Config{Nix: sys, NixFor: map[string]string{"b": other}}, map[string]string{"a": sys, "b": other}, ""},
		{"no nix there", Config{Nix: empty}, nil, "holds no nix executable"},
		{"relative", Config{Nix: "bin"}, nil, "want an absolute path"},
		{"needs quoting", Config{Nix: "/opt/my nix/bin"}, nil, "want an absolute path"},
		{"unknown host", Config{Nix: sys, NixFor: map[string]string{"c": other}}, nil, `host "c": no such host`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := nixDirs(tt.cfg, hosts)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want it to mention %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || !maps.Equal(got, tt.want) {
				t.Errorf("got %v %v, want %v", got, err, tt.want)
			}
		})
	}
}

// The host's init is started with SIGHUP at its default when this
// process ignores it (nohup): the mask is read from /proc/self/status.
func TestSigIgnored(t *testing.T) {
	for _, c := range []struct {
		name, status string
		sig          syscall.Signal
		want         bool
	}{
		{"nohup: SIGHUP ignored", "Name:\tx\nSigIgn:\t0000000000000001\n", syscall.SIGHUP, true},
		{"SIGPIPE ignored, not SIGHUP", "SigIgn:\t0000000000001000\n", syscall.SIGHUP, false},
		{"SIGPIPE", "SigIgn:\t0000000000001000\n", syscall.SIGPIPE, true},
		{"nothing ignored", "SigIgn:\t0000000000000000\n", syscall.SIGHUP, false},
		{"no SigIgn line", "Name:\tx\n", syscall.SIGHUP, false},
		{"garbled", "SigIgn:\tzz\n", syscall.SIGHUP, false},
	} {
		if got := sigIgnored(c.status, c.sig); got != c.want {
			t.Errorf("%s: sigIgnored = %v, want %v", c.name, got, c.want)
		}
	}
}
