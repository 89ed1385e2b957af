package transport

import (
	"bytes"
	"context"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/nix-hive/nix-hive/internal/testenv"
)

func TestPidFilter(t *testing.T) {
	tests := []struct {
		name    string
		writes  []string
		wantOut string
		wantPID int
	}{
		{"marker then output", []string{"nix-hive-pid:42\nerr\n"}, "err\n", 42},
		{"marker split across writes", []string{"nix-hi", "ve-pid:4", "2\ner", "r\n"}, "err\n", 42},
		{"no marker", []string{"boom\n"}, "boom\n", 0},
		{"short non-marker", []string{"n", "o\n"}, "no\n", 0},
		{"marker prefix, bad number", []string{"nix-hive-pid:x\nrest"}, "nix-hive-pid:x\nrest", 0},
		{"marker only once", []string{"nix-hive-pid:7\n", "nix-hive-pid:8\n"}, "nix-hive-pid:8\n", 7},
		{"nothing", nil, "", 0},
		{"marker without a group", []string{"nix-hive-pid:\nerr\n"}, "err\n", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			f := &pidFilter{w: &out, ready: make(chan struct{})}
			for _, w := range tt.writes {
				if n, err := f.Write([]byte(w)); err != nil || n != len(w) {
					t.Fatalf("Write(%q) = %d, %v", w, n, err)
				}
			}
			if out.String() != tt.wantOut {
				t.Errorf("passed on %q; want %q", out.String(), tt.wantOut)
			}
			ctx, cancel := context.WithCancel(context.Background())
			cancel() // an undecided filter must not block processGroup
			if pid := f.processGroup(ctx, nil); pid != tt.wantPID {
				t.Errorf("pid = %d; want %d", pid, tt.wantPID)
			}
		})
	}
}

// TestPidProbeInLoginShells runs the probe and a command under each login
// shell as sshd runs a session's shell (a new session, the line as -c) and
// checks that it reports the shell's process group and leaves the
// command's output alone. PATH holds no command, so a probe that started
// a process (as `sh -c 'echo $PPID'` did) would report nothing.
func TestPidProbeInLoginShells(t *testing.T) {
	for _, c := range []struct{ shell, hint string }{
		{"bash", "apt-get install bash"},
		{"dash", "apt-get install dash"},
		{"zsh", "apt-get install zsh"},
		{"fish", "apt-get install fish"},
	} {
		t.Run(c.shell, func(t *testing.T) {
			sh := testenv.Tool(t, c.shell, c.hint)
			// The command line sees none of the one-letter names the
			// probe once read into.
			cmd := exec.Command(sh, "-c", pidProbe+"\n"+`echo "out$p$c$s$q$g$r"; /bin/sh -c 'echo err >&2'`)
			cmd.Env = []string{"PATH=/nonexistent", "HOME=" + t.TempDir()}
			cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
			var out, errOut bytes.Buffer
			f := &pidFilter{w: &errOut, ready: make(chan struct{})}
			cmd.Stdout, cmd.Stderr = &out, f
			if err := cmd.Run(); err != nil {
				t.Fatalf("%s -c: %v\nstderr: %s", c.shell, err, errOut.String())
			}
			leader := cmd.Process.Pid
			if got := f.processGroup(context.Background(), nil); got != leader {
				t.Errorf("probe reported %d; the session's group is %d (stderr %q)", got, leader, errOut.String())
			}
			if out.String() != "out\n" {
				t.Errorf("stdout = %q; want the command's own", out.String())
			}
			if errOut.String() != "err\n" {
				t.Errorf("stderr = %q; want only the command's", errOut.String())
			}
		})
	}
}

// A command cancelled before its probe's line came, whose session then
// ended, has no group to kill: killGroup must not wait for the line (a
// pool's Close waits for pending kills, and Ctrl-C for Close).
func TestProcessGroupOfASessionThatEnded(t *testing.T) {
	f := &pidFilter{ready: make(chan struct{})}
	ended := make(chan error, 1)
	ended <- nil
	got := make(chan int, 1)
	go func() { got <- f.processGroup(context.Background(), ended) }()
	select {
	case pid := <-got:
		if pid != 0 {
			t.Errorf("processGroup = %d for a session that never printed its group; want 0", pid)
		}
	case <-time.After(time.Minute):
		t.Fatal("processGroup still waits for a line from a session that ended")
	}
}
