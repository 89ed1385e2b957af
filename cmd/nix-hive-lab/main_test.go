package main

import (
	"bytes"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/nix-hive/nix-hive/lab"
	"github.com/nix-hive/nix-hive/lab/labtest"
)

// The test binary doubles as nix-hive-lab, so the tests run the command as
// the demo script does: as a separate process.
func TestMain(m *testing.M) {
	if os.Getenv("NIX_HIVE_LAB_AS_MAIN") == "1" {
		os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

func command(t *testing.T, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(t.Context(), os.Args[0], args...)
	cmd.Env = append(os.Environ(), "NIX_HIVE_LAB_AS_MAIN=1")
	return cmd
}

// syncBuffer is written by a child process while the test may read it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestUpDown(t *testing.T) {
	labtest.Require(t)
	ctx := t.Context()
	dir := t.TempDir()

	up := command(t, "up", "-n", "2", "--internal", "1", "--dir", dir)
	var upOut syncBuffer
	up.Stdout, up.Stderr = &upOut, &upOut
	if err := up.Start(); err != nil {
		t.Fatal(err)
	}
	upDone := make(chan error, 1)
	go func() { upDone <- up.Wait() }()
	t.Cleanup(func() {
		up.Process.Kill()
		<-upDone
	})

	// Wait as the demo script does: for lab.json to exist, then read it.
	var info *lab.Info
	for info == nil {
		if i, err := lab.ReadInfo(filepath.Join(dir, "lab.json")); err == nil {
			info = i
			break
		}
		select {
		case err := <-upDone:
			upDone <- err
			t.Fatalf("up exited (%v) before writing lab.json:\n%s", err, upOut.String())
		case <-ctx.Done():
			t.Fatalf("no lab.json: %v\n%s", ctx.Err(), upOut.String())
		case <-time.After(20 * time.Millisecond):
		}
	}

	var names []string
	for _, h := range info.Hosts {
		names = append(names, h.Name)
	}
	if got := strings.Join(names, " "); got != "portico host-1 host-2 int-1" {
		t.Errorf("lab.json hosts %q", got)
	}
	if info.Hosts[3].Jump != "portico" {
		t.Errorf("int-1's jump = %q", info.Hosts[3].Jump)
	}

	// lab.json is written once the hosts accept SSH: log in right away.
	h := info.Hosts[1]
	key, err := os.ReadFile(info.ClientKey)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := ssh.ParsePrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	hostKey, _, _, _, err := ssh.ParseAuthorizedKey([]byte(h.HostKey))
	if err != nil {
		t.Fatal(err)
	}
	c, err := ssh.Dial("tcp", net.JoinHostPort(h.Addr, strconv.Itoa(h.Port)), &ssh.ClientConfig{
		User: "root", Auth: []ssh.AuthMethod{ssh.PublicKeys(signer)},
		HostKeyCallback: ssh.FixedHostKey(hostKey), Timeout: 30 * time.Second,
	})
	if err != nil {
		t.Fatalf("ssh %s: %v", h.Name, err)
	}
	c.Close()

	// lab.nix is a Nix expression naming the same hosts.
	out, err := exec.CommandContext(ctx, "nix-instantiate", "--eval", "--strict", "--json",
		"--expr", "builtins.attrNames (import "+info.HiveNix+")").CombinedOutput()
	if err != nil {
		t.Fatalf("evaluate %s: %v: %s", info.HiveNix, err, out)
	}
	if got := strings.TrimSpace(string(out)); got != `["host-1","host-2","int-1","portico"]` {
		t.Errorf("lab.nix instances: %s", got)
	}

	down := command(t, "down", "--dir", dir)
	if out, err := down.CombinedOutput(); err != nil {
		t.Fatalf("down: %v: %s", err, out)
	}
	// down returns once the lab released its directory, which it does last.
	select {
	case err := <-upDone:
		upDone <- err
		if err != nil {
			t.Errorf("up exited with %v:\n%s", err, upOut.String())
		}
	case <-ctx.Done():
		t.Fatalf("up still running after down")
	}
	for _, f := range []string{"lab.json", "lab.pid"} {
		if _, err := os.Stat(filepath.Join(dir, f)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left behind: %v", f, err)
		}
	}
	if out, err := exec.Command("pgrep", "-af", regexp.QuoteMeta(dir)).Output(); err == nil {
		t.Errorf("processes left behind:\n%s", out)
	}
	if _, err := os.Stat("/run/netns/" + info.Netns); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("network namespace %s left behind: %v", info.Netns, err)
	}
	// Commands against the torn-down lab's jump host go nowhere: not out
	// through this machine's default route.
	labtest.HoldBlock(t, info.Hosts[0].Addr)
	labtest.Unroutable(t, info.Hosts[0].Addr)

	out, err = command(t, "down", "--dir", dir).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "no lab runs") {
		t.Errorf("second down: %v: %s", err, out)
	}
}

func TestUsage(t *testing.T) {
	tests := []struct {
		args []string
		code int
		out  string
	}{
		{[]string{"--help"}, 0, "up"},
		{[]string{"up"}, 2, "--dir"},
		{[]string{"up", "--dir", "/tmp/x", "-n", "many"}, 2, "--hosts"},
		{[]string{"bogus"}, 2, "bogus"},
	}
	for _, tt := range tests {
		var out bytes.Buffer
		if code := run(tt.args, &out, &out); code != tt.code || !strings.Contains(out.String(), tt.out) {
			t.Errorf("run(%q) = %d, %q; want %d and output mentioning %q", tt.args, code, out.String(), tt.code, tt.out)
		}
	}
}
