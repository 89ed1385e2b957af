package cli_test

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nix-hive/nix-hive/internal/testenv"
	"github.com/nix-hive/nix-hive/lab"
	"github.com/nix-hive/nix-hive/shell"
)

// nix-hive ssh behaves as OpenSSH's ssh where scripts depend on it: one
// argument is a remote shell command line, the remote status passes
// through, and 255 means the connection failed or was lost. Plain ssh with
// the generated config is the reference for the first two.
func TestSSHLikeOpenSSH(t *testing.T) {
	f := newFleet(t, lab.Config{Hosts: 1}, false)
	code, cfgPath, _ := f.run("ssh-config", "--write")
	cfgPath = strings.TrimSpace(cfgPath)
	if code != 0 || cfgPath == "" {
		t.Fatalf("ssh-config --write: exit %d", code)
	}
	line := `echo "a  b" $((6*7)); exit 4`
	code, out, _ := f.run("ssh", "host-1", line)
	ref := exec.Command("ssh", "-F", cfgPath, "-o", "BatchMode=yes", "host-1", line)
	refOut, err := ref.Output()
	refCode := ref.ProcessState.ExitCode()
	if err != nil && refCode < 0 {
		t.Fatalf("OpenSSH: %v", err)
	}
	if code != 4 || out != "a  b 42\n" || code != refCode || out != string(refOut) {
		t.Errorf("nix-hive ssh host-1 %q: exit %d %q; OpenSSH: exit %d %q", line, code, out, refCode, refOut)
	}
	// Several arguments stay one argument each.
	code, out, _ = f.run("ssh", "host-1", "printf", "[%s]", "a  b", "$(exit 9)")
	if code != 0 || out != "[a  b][$(exit 9)]" {
		t.Errorf("several arguments: exit %d %q", code, out)
	}

	// A connection cut while the command runs: 255, not the remote's 1.
	h := f.lab.Host("host-1")
	marker := "/run/ssh-cut-started"
	cut := make(chan error, 1)
	go func() {
		err := waitFor("the remote command to start", func() bool {
			_, err := os.Stat(h.Path(marker))
			return err == nil
		})
		if err == nil {
			_, err = h.Faults().CutConnections()
		}
		cut <- err
	}()
	code, _, errOut := f.run("ssh", "host-1", "touch "+marker+"; sleep 600; exit 1")
	if err := <-cut; err != nil {
		t.Fatal(err)
	}
	if code != 255 || !strings.Contains(errOut, "host-1") {
		t.Errorf("connection cut: exit %d (want 255), stderr %q", code, errOut)
	}
	// No connection at all: 255 too.
	if err := h.Stop(); err != nil {
		t.Fatal(err)
	}
	code, _, errOut = f.run("ssh", "host-1", "true")
	if code != 255 || errOut == "" {
		t.Errorf("stopped host: exit %d (want 255), stderr %q", code, errOut)
	}
	if _, err := os.Stat(filepath.Join(f.dir, ".nix-hive", "ssh_config")); err != nil {
		t.Errorf("ssh-config --write left no file: %v", err)
	}
}

// An instance with no pinned key and no known one: deploy refuses it with
// the fingerprint and the line to pin before nix copy runs, and
// --accept-new-host-keys records the key in the hive's own known_hosts
// under the instance's name, never in the user's.
func TestDeployHostKeyUnknownThenAccepted(t *testing.T) {
	home := t.TempDir()
	t.Setenv("HOME", home)
	s := newSeed(t)
	key := s.lab.Host("storage").HostKey
	editFile(t, filepath.Join(s.dir, "lab.nix"), fmt.Sprintf("hostKey = %q;", key), "")

	code, _, errOut := s.run("deploy", "storage")
	if code == 0 {
		t.Fatal("deploy to a host with an unknown key: exit 0")
	}
	for _, want := range []string{"host key for storage", "SHA256:", `hostKey = "` + key} {
		if !strings.Contains(errOut, want) {
			t.Errorf("refusal lacks %q:\n%s", want, errOut)
		}
	}
	if strings.Contains(errOut, "cannot connect") {
		t.Errorf("refusal reported as nix copy's connection failure:\n%s", errOut)
	}
	storage := s.state().Systems["storage"].OutPath
	if storage == "" || s.has("storage", storage) || s.current("storage") == storage {
		t.Fatalf("closure %q reached the refused host", storage)
	}

	if code, _, _ := s.run("deploy", "--accept-new-host-keys", "storage"); code != 0 {
		t.Fatalf("deploy --accept-new-host-keys: exit %d", code)
	}
	if got := s.current("storage"); got != storage {
		t.Errorf("storage runs %q, want %s", got, storage)
	}
	rec, err := os.ReadFile(filepath.Join(s.dir, ".nix-hive", "known_hosts"))
	if err != nil || !strings.Contains(string(rec), "storage "+key) || strings.Count(string(rec), "\n") != 1 {
		t.Errorf("hive known_hosts = %q, %v; want one line for storage", rec, err)
	}
	if _, err := os.Stat(filepath.Join(home, ".ssh", "known_hosts")); err == nil {
		t.Errorf("the user's known_hosts was written")
	}
	// Known from now on, to nix-hive and to OpenSSH with the generated
	// config.
	if code, out, _ := s.run("run", "storage", "--", "echo", "known"); code != 0 || !strings.Contains(out, "known") {
		t.Errorf("run with the recorded key: exit %d", code)
	}
	_, cfg, _ := s.run("ssh-config", "--write")
	out, err := exec.Command("ssh", "-F", strings.TrimSpace(cfg), "-o", "BatchMode=yes", "storage", "echo", "via-openssh").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "via-openssh") {
		t.Errorf("OpenSSH with the generated config: %v\n%s", err, out)
	}
}

// A host reachable only through a ProxyCommand in the user's ~/.ssh/config
// (as SSM, Teleport or cloudflared users have): deploy pushes to it with
// nix copy and activates it with nix-hive's own client, both through the
// command; plain OpenSSH with the generated config gets there too.
func TestProxyCommandFromUserConfig(t *testing.T) {
	testenv.Tool(t, "nc", "apt-get install netcat-openbsd")
	home := t.TempDir()
	t.Setenv("HOME", home)
	s := newSeed(t)
	www1 := s.lab.Host("www-1")
	if err := dialable(www1.Addr); err == nil {
		t.Fatal("www-1 is reachable directly; the topology is wrong")
	}
	// The hive says nothing about how to get there: no jump, no store.
	editFile(t, filepath.Join(s.dir, "lab.nix"), fmt.Sprintf("%q = { host = %q; port = 22; user = \"root\"; hostKey = %q; jump = \"portico\";",
		"www-1", www1.Addr, www1.HostKey), fmt.Sprintf("%q = { host = %q; port = 22; user = \"root\"; hostKey = %q;", "www-1", www1.Addr, www1.HostKey))
	s.edit(`jump = "portico"; store = "portico"; tags = [ "web" "canary" ];`, `tags = [ "web" "canary" ];`)
	// The proxy leaves a trace of each use, so the test knows it was
	// the way in.
	uses := filepath.Join(t.TempDir(), "proxy-uses")
	if err := os.Mkdir(filepath.Join(home, ".ssh"), 0o700); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(home, ".ssh", "config"), fmt.Sprintf(
		"Host www-1\n\tProxyCommand sh -c 'echo %%n >>%s; exec ip netns exec %s nc %%h %%p'\n", uses, s.lab.Netns))

	code, out, _ := s.run("--json", "deploy", "www-1")
	if code != 0 {
		t.Fatalf("deploy through ProxyCommand: exit %d", code)
	}
	www := s.state().Systems["www"].OutPath
	if got := s.current("www-1"); got != www {
		t.Errorf("www-1 runs %q, want %s", got, www)
	}
	pushed := false
	for _, e := range events(t, out) {
		pushed = pushed || e.Type == "event" && e.Instance == "www-1" && e.Step == "push" && e.Status == "ok"
	}
	if !pushed {
		t.Errorf("www-1 was not pushed to with nix copy")
	}
	b, _ := os.ReadFile(uses)
	// At least one use by nix-hive's client and one by nix copy's ssh.
	if n := strings.Count(string(b), "www-1\n"); n < 2 {
		t.Errorf("ProxyCommand used %d times (%q); want nix copy and nix-hive's client", n, b)
	}
	code, out, _ = s.run("ssh", "www-1", "hostname")
	if code != 0 || strings.TrimSpace(out) != "www-1" {
		t.Errorf("nix-hive ssh through ProxyCommand: exit %d %q", code, out)
	}
	_, cfg, _ := s.run("ssh-config", "--write")
	hn, err := exec.Command("ssh", "-F", strings.TrimSpace(cfg), "-o", "BatchMode=yes", "www-1", "hostname").CombinedOutput()
	if err != nil || strings.TrimSpace(string(hn)) != "www-1" {
		t.Errorf("OpenSSH with the generated config: %v\n%s", err, hn)
	}
	// A failing proxy says why, in nix-hive's words and the proxy's.
	writeFile(t, filepath.Join(home, ".ssh", "config"), "Host www-1\n\tProxyCommand sh -c 'echo session manager says no >&2; exit 3'\n")
	code, _, errOut := s.run("ssh", "www-1", "true")
	if code != 255 || !strings.Contains(errOut, "session manager says no") {
		t.Errorf("failing ProxyCommand: exit %d, stderr %q", code, errOut)
	}
}

// An upload is never readable by others while in flight, whatever the
// host's umask, and an interrupted one leaves nothing behind. The source
// is a FIFO the test keeps feeding, so the upload is in flight for as long
// as the test wants.
func TestSCPUploadPrivateInFlightAndCleanedUp(t *testing.T) {
	f := newFleet(t, lab.Config{Hosts: 1}, false)
	h := f.lab.Host("host-1")
	// The precondition that made the old upload leak: a 022 umask, so a
	// file created over sftp without care is 0644.
	if code, out, _ := f.run("ssh", "host-1", "mkdir -p /root/scp && umask"); code != 0 || strings.TrimSpace(out) != "0022" {
		t.Fatalf("host umask %q; the test needs 0022", out)
	}
	fifo := filepath.Join(t.TempDir(), "secret")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	r := startProcessIn(t, f.dir, "scp", fifo, "host-1:/root/scp/secret")
	feeding := make(chan error, 1)
	go func() {
		w, err := os.OpenFile(fifo, os.O_WRONLY, 0)
		if err != nil {
			feeding <- err
			return
		}
		defer w.Close()
		chunk := bytes.Repeat([]byte("s3cret\n"), 4096)
		for {
			if _, err := w.Write(chunk); err != nil {
				feeding <- nil // the reader is gone: nix-hive ended
				return
			}
		}
	}()
	// Watch the directory on the host until the temporary file holds data.
	// From the first sighting on, the staging directory is 0700 and the
	// file has the source's mode (0600): it is created so, not chmodded
	// after the umask made it 0644.
	tmp := h.Path("/root/scp")
	var seen string
	sightings := 0
	waitUntil(t, "the upload's temporary file to hold data", func() bool {
		stages, _ := filepath.Glob(filepath.Join(tmp, ".nix-hive-*"))
		for _, st := range stages {
			files, _ := filepath.Glob(filepath.Join(st, "*"))
			for _, fn := range files {
				fi, err := os.Stat(fn)
				if err != nil {
					continue
				}
				di, err := os.Stat(st)
				if err != nil {
					continue
				}
				sightings++
				if di.Mode().Perm() != 0o700 {
					t.Errorf("staging directory %s is %v while it holds %s", st, di.Mode().Perm(), fn)
				}
				if fi.Mode().Perm() != 0o600 {
					t.Errorf("temporary file %s is %v (%d bytes), want 0600 from the start", fn, fi.Mode().Perm(), fi.Size())
				}
				if fi.Size() > 0 {
					seen = fn
					return true
				}
			}
		}
		return false
	})
	t.Logf("temporary file seen %d times, always 0600 in a 0700 directory", sightings)
	if _, err := os.Stat(h.Path("/root/scp/secret")); err == nil {
		t.Fatalf("/root/scp/secret exists before the upload completed")
	}
	r.signal(syscall.SIGTERM)
	if code := r.wait(); code == 0 {
		t.Errorf("scp interrupted by SIGTERM: exit 0")
	}
	if err := <-feeding; err != nil {
		t.Fatal(err)
	}
	left, _ := filepath.Glob(filepath.Join(tmp, ".nix-hive-*"))
	if _, err := os.Stat(seen); err == nil || len(left) > 0 {
		t.Errorf("left behind on the host: %v (temporary file %s)", left, seen)
	}
	if _, err := os.Stat(h.Path("/root/scp/secret")); err == nil {
		t.Errorf("/root/scp/secret exists after an interrupted upload")
	}

	// A completed upload has the source's mode.
	src := filepath.Join(t.TempDir(), "done")
	writeFile(t, src, "complete")
	if err := os.Chmod(src, 0o600); err != nil {
		t.Fatal(err)
	}
	if code, _, _ := f.run("scp", src, "host-1:/root/scp/secret"); code != 0 {
		t.Fatal("scp failed")
	}
	if fi, err := os.Stat(h.Path("/root/scp/secret")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("/root/scp/secret: %v %v, want 0600", fi, err)
	}
}

// scp -r into a local directory holding a symbolic link where the copy
// needs a directory refuses instead of writing, or changing modes, through
// the link.
func TestSCPDownloadRefusesLocalSymlinks(t *testing.T) {
	f := newFleet(t, lab.Config{Hosts: 1}, false)
	if code, _, _ := f.run("ssh", "host-1", "mkdir -p /root/tree/sub && echo x >/root/tree/sub/file && chmod 0700 /root/tree/sub"); code != 0 {
		t.Fatal("remote setup failed")
	}
	dest := t.TempDir()
	outside := t.TempDir()
	if err := os.Chmod(outside, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dest, "tree"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(dest, "tree", "sub")); err != nil {
		t.Fatal(err)
	}
	code, _, errOut := f.run("scp", "-r", "host-1:/root/tree", dest)
	if code == 0 || !strings.Contains(errOut, "symbolic link") {
		t.Errorf("scp -r through a local symlink: exit %d, stderr %q", code, errOut)
	}
	if fi, err := os.Stat(outside); err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("the link's target is now %v (%v); want 0755 as before", fi.Mode().Perm(), err)
	}
	if ents, _ := os.ReadDir(outside); len(ents) != 0 {
		t.Errorf("files written through the link: %v", ents)
	}
}

// sshKeygen runs ssh-keygen or fails the test.
func sshKeygen(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("ssh-keygen", args...).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen %q: %v\n%s", args, err, out)
	}
}

// Host certificates (a hive hostCA, or @cert-authority in known_hosts)
// stand in for pinned keys; a certificate for another name is refused.
// User certificates log in where sshd trusts only a user CA.
func TestCertificates(t *testing.T) {
	home := t.TempDir()
	t.Setenv("HOME", home)
	f := newFleet(t, lab.Config{Hosts: 2}, false)
	keys := t.TempDir()
	ca := filepath.Join(keys, "host_ca")
	sshKeygen(t, "-q", "-t", "ed25519", "-N", "", "-C", "host CA", "-f", ca)
	caPub, err := os.ReadFile(ca + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	// host-1's certificate names its address; host-2's names another host.
	for _, c := range []struct{ host, principal string }{{"host-1", f.lab.Host("host-1").Addr}, {"host-2", "elsewhere.example"}} {
		h := f.lab.Host(c.host)
		sshKeygen(t, "-q", "-s", ca, "-I", c.host, "-h", "-n", c.principal, h.HostKeyFile()+".pub")
		if err := h.ConfigureSSHD(t.Context(), "HostCertificate "+h.HostKeyFile()+"-cert.pub"); err != nil {
			t.Fatal(err)
		}
		// No pin: only the certificate can vouch for the host.
		editFile(t, filepath.Join(f.dir, "lab.nix"), fmt.Sprintf("hostKey = %q;", h.HostKey), "")
	}
	editFile(t, filepath.Join(f.dir, "hive.nix"), "systems.t.toplevel = null;",
		fmt.Sprintf("systems.t.toplevel = null;\n  hostCA = %q;", strings.TrimSpace(string(caPub))))

	code, out, _ := f.run("run", "host-1", "--", "echo", "certified")
	if code != 0 || !strings.Contains(out, "certified") {
		t.Errorf("host-1 with a host certificate from the hive's hostCA: exit %d", code)
	}
	code, _, errOut := f.run("run", "host-2", "--", "touch", "/root/ran")
	if code == 0 || !strings.Contains(errOut, "host certificate was refused") || !strings.Contains(errOut, "elsewhere") {
		t.Errorf("host-2's certificate for another name: exit %d\n%s", code, errOut)
	}
	if _, err := os.Stat(f.lab.Host("host-2").Path("/root/ran")); err == nil {
		t.Errorf("a command ran on host-2")
	}
	// OpenSSH with the generated config checks the same certificate.
	_, cfg, _ := f.run("ssh-config", "--write")
	cfg = strings.TrimSpace(cfg)
	if out, err := exec.Command("ssh", "-F", cfg, "-o", "BatchMode=yes", "host-1", "echo", "openssh-certified").CombinedOutput(); err != nil || !strings.Contains(string(out), "openssh-certified") {
		t.Errorf("OpenSSH to host-1 with the generated config: %v\n%s", err, out)
	}
	if out, err := exec.Command("ssh", "-F", cfg, "-o", "BatchMode=yes", "host-2", "true").CombinedOutput(); err == nil {
		t.Errorf("OpenSSH accepted host-2's certificate for another name\n%s", out)
	}

	// The same authority from the user's known_hosts instead of the hive.
	editFile(t, filepath.Join(f.dir, "hive.nix"), fmt.Sprintf("hostCA = %q;", strings.TrimSpace(string(caPub))), "")
	if code, _, _ := f.run("run", "host-1", "--", "true"); code == 0 {
		t.Fatalf("host-1 accepted with no authority and no pin")
	}
	if err := os.MkdirAll(filepath.Join(home, ".ssh"), 0o700); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(home, ".ssh", "known_hosts"), "@cert-authority 127.77.* "+string(caPub))
	if code, _, errOut := f.run("run", "host-1", "--", "true"); code != 0 {
		t.Errorf("host-1 with @cert-authority in ~/.ssh/known_hosts: exit %d\n%s", code, errOut)
	}

	// A user certificate: host-1 trusts only the user CA, and a key it has
	// never seen logs in with its certificate (found beside the key).
	h := f.lab.Host("host-1")
	userCA := filepath.Join(keys, "user_ca")
	sshKeygen(t, "-q", "-t", "ed25519", "-N", "", "-C", "user CA", "-f", userCA)
	if err := h.ConfigureSSHD(t.Context(), fmt.Sprintf("HostCertificate %s-cert.pub\nTrustedUserCAKeys %s.pub\nAuthorizedKeysFile none", h.HostKeyFile(), userCA)); err != nil {
		t.Fatal(err)
	}
	if code, _, _ := f.run("run", "host-1", "--", "true"); code == 0 {
		t.Fatalf("host-1 still takes the lab's plain key; the test is wrong")
	}
	me := filepath.Join(keys, "me")
	sshKeygen(t, "-q", "-t", "ed25519", "-N", "", "-f", me)
	sshKeygen(t, "-q", "-s", userCA, "-I", "me", "-n", "root", me+".pub")
	labNix := filepath.Join(f.dir, "lab.nix")
	b, err := os.ReadFile(labNix)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(b), "\n")
	for i, l := range lines {
		if strings.HasPrefix(strings.TrimSpace(l), `"host-1" =`) {
			lines[i] = strings.Replace(l, fmt.Sprintf("IdentityFile = %q;", f.lab.ClientKey), fmt.Sprintf("IdentityFile = %q; IdentitiesOnly = \"yes\";", me), 1)
		}
	}
	writeFile(t, labNix, strings.Join(lines, "\n"))
	if code, out, _ := f.run("run", "host-1", "--", "echo", "by-certificate"); code != 0 || !strings.Contains(out, "by-certificate") {
		t.Errorf("login with a user certificate beside the key: exit %d", code)
	}
	// CertificateFile names it elsewhere.
	moved := filepath.Join(t.TempDir(), "my cert.pub")
	if err := os.Rename(me+"-cert.pub", moved); err != nil {
		t.Fatal(err)
	}
	if code, _, _ := f.run("run", "host-1", "--", "true"); code == 0 {
		t.Errorf("logged in without the certificate; the test is wrong")
	}
	editFile(t, filepath.Join(f.dir, "lab.nix"), `IdentitiesOnly = "yes";`, fmt.Sprintf(`IdentitiesOnly = "yes"; CertificateFile = %q;`, moved))
	if code, _, _ := f.run("run", "host-1", "--", "true"); code != 0 {
		t.Errorf("login with CertificateFile: exit %d", code)
	}
}

// An encrypted key that no agent holds: from a terminal, nix-hive asks for
// its passphrase once (without echo), however many hosts use it; without
// one, the key is skipped and the refusal says what to do.
func TestEncryptedKeyPassphrasePrompt(t *testing.T) {
	testenv.Tool(t, "script", "apt-get install bsdutils")
	t.Setenv("SSH_AUTH_SOCK", "")
	f := newFleet(t, lab.Config{Hosts: 2}, false)
	keys := t.TempDir()
	enc := filepath.Join(keys, "enc")
	const passphrase = "correct horse battery"
	sshKeygen(t, "-q", "-t", "ed25519", "-N", passphrase, "-f", enc)
	if err := os.Remove(enc + ".pub"); err != nil { // the key's own header must do
		t.Fatal(err)
	}
	sshKeygen(t, "-q", "-y", "-P", passphrase, "-f", enc) // checks the passphrase
	pub, err := exec.Command("ssh-keygen", "-y", "-P", passphrase, "-f", enc).Output()
	if err != nil {
		t.Fatal(err)
	}
	authorized := filepath.Join(keys, "authorized_keys")
	writeFile(t, authorized, string(pub))
	for _, h := range f.lab.Hosts {
		if err := h.ConfigureSSHD(t.Context(), "AuthorizedKeysFile "+authorized); err != nil {
			t.Fatal(err)
		}
	}
	editFileAll(t, filepath.Join(f.dir, "lab.nix"), fmt.Sprintf("IdentityFile = %q;", f.lab.ClientKey), fmt.Sprintf("IdentityFile = %q;", enc))

	// No terminal (a new session has none): skipped, and said why.
	cmd := exec.Command("nix-hive", "-c", f.dir, "run", "host-*", "--", "true")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "load it into ssh-agent") {
		t.Errorf("without a terminal: %v\n%s", err, out)
	}

	// From a terminal (script gives it one): asked once, for both hosts.
	in, feed := io.Pipe()
	term := newWatched()
	sc := exec.Command("script", "-qec", "nix-hive -c "+shell.Quote(f.dir)+" run 'host-*' -- echo logged-in", "/dev/null")
	sc.Stdin, sc.Stdout, sc.Stderr = in, term, term
	if err := sc.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	var code int
	go func() {
		sc.Wait()
		code = sc.ProcessState.ExitCode()
		feed.Close()
		close(done)
	}()
	term.waitFor(t, "Enter passphrase for key '"+regexp.QuoteMeta(enc)+"': ", done)
	if _, err := io.WriteString(feed, passphrase+"\n"); err != nil {
		t.Fatal(err)
	}
	feed.Close() // script ends only after its input does
	select {
	case <-done:
	case <-time.After(3 * time.Minute): // a bound against a hang
		sc.Process.Kill()
		t.Fatalf("nix-hive did not end after the passphrase was typed:\n%s", term.String())
	}
	t.Logf("through script: exit %d\n%s", code, term.String())
	if code != 0 || strings.Count(term.String(), "logged-in") != 2 {
		t.Errorf("with the passphrase typed: exit %d, want both hosts logged in", code)
	}
	if n := strings.Count(term.String(), "Enter passphrase"); n != 1 {
		t.Errorf("asked %d times; want once for one key file", n)
	}
	if strings.Contains(term.String(), passphrase) {
		t.Errorf("the passphrase was echoed")
	}
}
