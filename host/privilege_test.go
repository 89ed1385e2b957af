package host

import (
	"bytes"
	"context"
	"io"
	"os/exec"
	"strings"
	"sync"
	"testing"

	"github.com/nix-hive/nix-hive/eval"
)

func TestPrivilegeCommands(t *testing.T) {
	p := NewPrivilege("sudo -n", nil, false)
	p.agents["b"] = "/usr/local/bin/nix-hive-agent"
	p.hosts["c"], p.hosts["d"] = true, true
	p.agents["d"] = "/run/current-system/sw/bin/nix-hive-agent"
	for _, c := range []struct{ host, want string }{
		{"a", "sudo -n sh -c "},
		{"b", "sudo -n /usr/local/bin/nix-hive-agent lock owner"},
		{"c", "sudo -S -p '' -- sh -c 'while IFS= read -r l; do [ \"$l\" = \"$0\" ] && break; done; exec \"$@\"' " + p.marker + " sh -c "},
		{"d", "sudo -S -p '' -- /run/current-system/sw/bin/nix-hive-agent --skip-to " + p.marker + " lock owner"},
	} {
		got := program(lockProgram, true, "deploy", p.forHost(c.host), "owner")
		if !strings.HasPrefix(got, c.want) {
			t.Errorf("%s: lock as %q, want it to start %q", c.host, got, c.want)
		}
		if root := program(lockProgram, true, "root", p.forHost(c.host), "owner"); strings.Contains(root, "sudo") {
			t.Errorf("%s: a root login's lock goes through sudo: %q", c.host, root)
		}
	}
	if got := program(queryProgram, false, "deploy", p.forHost("d")); strings.Contains(got, "sudo") {
		t.Errorf("an unprivileged program goes through sudo: %q", got)
	}
}

// The password goes first, then the marker, then the command's input; only
// to commands that carry this run's marker.
func TestPrivilegeStdin(t *testing.T) {
	p := NewPrivilege("sudo", nil, true)
	p.password = []byte("s3cret")
	cmd := program(catProgram, true, "deploy", p.forHost("a"))
	in, _ := io.ReadAll(p.stdin(cmd, strings.NewReader("key value")))
	if want := "s3cret\n" + p.marker + "\nkey value"; string(in) != want {
		t.Errorf("stdin = %q, want %q", in, want)
	}
	other, _ := io.ReadAll(p.stdin("sh -c 'cat'", strings.NewReader("x")))
	if string(other) != "x" {
		t.Errorf("a command without the marker got %q", other)
	}
}

// catProgram is a root program that reads its input.
const catProgram = `cat`

// The agent's realise refuses what could smuggle options into nix-store or
// ssh; the shell's own parsing decides, so run it.
func TestAgentRealiseChecksArguments(t *testing.T) {
	for _, args := range [][]string{
		{"10", "22", "", "ssh://-oProxyCommand=x", "", "/nix/store/abc-x"},
		{"10", "22", "/tmp/kh x", "ssh://root@h", "", "/nix/store/abc-x"},
		{"1a", "22", "", "ssh://root@h", "", "/nix/store/abc-x"},
		{"10", "22", "", "ssh://root@h", "", "--option"},
		{"10", "22", "", "ssh://root@h", "", "/nix/store/abc-x/../../etc"},
		{"10", "22", "", "ssh://root@h", ""},
		{"10", "22", "1", "../../etc/x", "h ssh-ed25519 AAAA", "ssh://root@h", "", "/nix/store/abc-x"},
		{"10", "22", "1", "", "h ssh-ed25519 AAAA", "ssh://root@h", "", "/nix/store/abc-x"},
	} {
		var stderr bytes.Buffer
		cmd := exec.Command("sh", append([]string{"-c", AgentScript(), "nix-hive-agent", "realise"}, args...)...)
		cmd.Stderr = &stderr
		err := cmd.Run()
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 64 || !strings.Contains(stderr.String(), "nix-hive-agent realise:") {
			t.Errorf("realise %q: %v, %s", args, err, stderr.String())
		}
	}
	out, err := exec.Command("sh", "-c", AgentScript(), "nix-hive-agent", "version").Output()
	if err != nil || strings.TrimSpace(string(out)) != AgentVersion() {
		t.Errorf("version: %q, %v", out, err)
	}
}

// lockRecorder answers the lock program and records every command.
type lockRecorder struct {
	Remote
	mu   sync.Mutex
	cmds []string
}

func (r *lockRecorder) Run(ctx context.Context, name, cmd string, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	r.mu.Lock()
	r.cmds = append(r.cmds, cmd)
	r.mu.Unlock()
	if strings.Contains(cmd, "lock") {
		io.WriteString(stdout, "locked\nactive=/nix/store/x\nend\n")
	}
	if stdin != nil {
		io.Copy(io.Discard, stdin)
	}
	return 0, nil
}

// With the password asked upfront, a root login's lock still runs no
// sudo at all: no probe, no password check, no sudo -S.
func TestLockAsRootLoginSkipsPrivilege(t *testing.T) {
	p := NewPrivilege("sudo", func() ([]byte, error) { return []byte("pw"), nil }, true)
	if err := p.Prepare(); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		user      string
		wantCmds  int
		wantSudoS bool
	}{{"root", 1, false}, {"deploy", 3, true}} { // probe, check, lock
		r := &lockRecorder{}
		l, hs, err := Lock(context.Background(), r, &eval.Instance{Name: "h-" + c.user, User: c.user}, p, "me", nil)
		if err != nil || hs.Active != "/nix/store/x" {
			t.Fatalf("%s: lock: %v %+v", c.user, err, hs)
		}
		l.Release(context.Background())
		all := strings.Join(r.cmds, "\n")
		if len(r.cmds) != c.wantCmds || strings.Contains(all, "sudo -S") != c.wantSudoS {
			t.Errorf("%s: %d commands, want %d (sudo -S: %v):\n%s", c.user, len(r.cmds), c.wantCmds, c.wantSudoS, all)
		}
	}
}
