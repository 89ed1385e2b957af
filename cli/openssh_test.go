package cli_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nix-hive/nix-hive/lab"
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
			_, err = h.CutConnections()
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
