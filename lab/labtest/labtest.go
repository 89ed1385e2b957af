package labtest

import (
	"bytes"
	"errors"
	"net"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nix-hive/nix-hive/internal/testenv"
	"github.com/nix-hive/nix-hive/lab"
)

// Require skips the test when the machine cannot run a lab, or fails it
// under CI, where a skipped end-to-end test would hide a broken setup.
func Require(t testing.TB) {
	t.Helper()
	if err := lab.Check(); err != nil {
		testenv.Missing(t, err.Error())
	}
}

// New starts a lab for a test and closes it when the test ends. It calls
// Require first and fails the test when the lab cannot start.
func New(t testing.TB, cfg lab.Config) *lab.Lab {
	t.Helper()
	Require(t)
	l, err := lab.Start(t.Context(), cfg)
	if err != nil {
		t.Fatalf("start lab: %v", err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("close lab: %v", err)
		}
	})
	return l
}

// HoldBlock keeps every lab from the address block of addr until the test
// ends (lab.HoldBlock), waiting for a lab that has it to close first.
func HoldBlock(t testing.TB, addr string) {
	t.Helper()
	release, err := lab.HoldBlock(t.Context(), addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(release)
}

// Unroutable fails t unless a packet for addr cannot leave this machine:
// the kernel has no route to it, and a TCP connection fails at once with
// "no route to host" instead of following the default route out. addr is
// a lab address that no running lab gives a link: one of a closed lab
// (after HoldBlock), or one that a running lab reaches only through a jump
// host.
func Unroutable(t testing.TB, addr string) {
	t.Helper()
	// Look before connecting: a connection to an address that routes
	// would itself be the leak.
	out, err := exec.CommandContext(t.Context(), "ip", "route", "get", addr).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "No route to host") {
		t.Fatalf("ip route get %s: %v: %s\nwant no route to host: a packet for a lab address must never leave this machine", addr, err, bytes.TrimSpace(out))
	}
	// The timeout bounds a connection that should not be tried at all.
	c, err := net.DialTimeout("tcp", net.JoinHostPort(addr, "22"), 10*time.Second)
	if err == nil {
		c.Close()
	}
	if !errors.Is(err, syscall.EHOSTUNREACH) {
		t.Fatalf("connect to %s: %v; want no route to host", addr, err)
	}
}
