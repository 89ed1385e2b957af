package lab_test

import (
	"context"
	"errors"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/nix-hive/nix-hive/internal/testenv"
	"github.com/nix-hive/nix-hive/lab"
	"github.com/nix-hive/nix-hive/lab/labtest"
)

// canDial reports whether an SSH session to h gets through. A host that
// should answer gets long (a bound against a hang on a loaded machine); one
// that should not, a few seconds to stay silent (not a speed assertion:
// silence is the expected outcome either way).
func canDial(t *testing.T, l *lab.Lab, h *lab.Host) error { return dialWithin(t, l, h, time.Minute) }

func cannotDial(t *testing.T, l *lab.Lab, h *lab.Host) error {
	return dialWithin(t, l, h, 3*time.Second)
}

func dialWithin(t *testing.T, l *lab.Lab, h *lab.Host, limit time.Duration) error {
	addr := net.JoinHostPort(h.Addr, strconv.Itoa(h.Port))
	raw, err := net.DialTimeout("tcp", addr, limit)
	if err != nil {
		return err
	}
	defer raw.Close()
	// ssh's own Timeout covers only the TCP connect; a frozen host
	// completes that and then says nothing.
	raw.SetDeadline(time.Now().Add(limit))
	sc, chans, reqs, err := ssh.NewClientConn(raw, addr, sshConfig(t, l, h.HostKey))
	if err != nil {
		return err
	}
	c := ssh.NewClient(sc, chans, reqs)
	defer c.Close()
	s, err := c.NewSession()
	if err == nil {
		s.Close()
	}
	return err
}

// The host's stand-ins for what switching NixOS systems does: sshd can
// stop while the host lives on, and come back; the firewall can drop SSH
// to this host alone.
func TestHostServices(t *testing.T) {
	l := labtest.New(t, lab.Config{Hosts: 2})
	a, b := l.Hosts[0], l.Hosts[1]
	exec1(t, a, "lab-service", "sshd-stop")
	if err := cannotDial(t, l, a); err == nil {
		t.Fatal("sshd stopped, yet a connection got through")
	}
	exec1(t, a, "lab-service", "sshd-start")
	if err := canDial(t, l, a); err != nil {
		t.Fatalf("sshd started again, yet: %v", err)
	}

	exec1(t, a, "lab-service", "firewall-block-ssh")
	if err := cannotDial(t, l, a); err == nil {
		t.Fatal("firewall blocks ssh, yet a connection got through")
	}
	if err := canDial(t, l, b); err != nil {
		t.Errorf("%s's firewall blocked %s: %v", a.Name, b.Name, err)
	}
	exec1(t, a, "lab-service", "firewall-open")
	if err := canDial(t, l, a); err != nil {
		t.Fatalf("firewall open, yet: %v", err)
	}
}

// reboot inside a host restarts it as a boot would: /run is empty again,
// /run/current-system is what the system profile points at, sshd is back.
func TestHostReboot(t *testing.T) {
	l := labtest.New(t, lab.Config{Hosts: 1})
	h := l.Hosts[0]
	exec1(t, h, "sh", "-c", `set -e
mkdir -p /nix/store/aaa-sys-1 /nix/store/bbb-sys-2 /nix/var/nix/profiles
ln -s /nix/store/bbb-sys-2 /nix/var/nix/profiles/system-2-link
ln -s system-2-link /nix/var/nix/profiles/system
ln -s /nix/store/aaa-sys-1 /run/current-system
touch /run/marker`)
	exec1(t, h, "sh", "-c", "setsid reboot </dev/null >/dev/null 2>&1 &")
	if err := testenv.Eventually("the reboot", func() bool { return h.Boots() == 1 }); err != nil {
		// Seen once under CI's load (every package's tests at once);
		// whether the lab could start the host again is in its log.
		t.Fatalf("%v; the host's log: %s", err, h.LogTail())
	}
	if _, err := os.Stat(h.Path("/run/marker")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("/run survived the reboot: %v", err)
	}
	for _, link := range []string{"/run/current-system", "/run/booted-system"} {
		if got, _ := os.Readlink(h.Path(link)); got != "/nix/store/bbb-sys-2" {
			t.Errorf("%s = %q after the boot, want the profile's /nix/store/bbb-sys-2", link, got)
		}
	}
	if err := canDial(t, l, h); err != nil {
		t.Errorf("sshd not back after the reboot: %v", err)
	}
}

func TestHostFaults(t *testing.T) {
	l := labtest.New(t, lab.Config{Hosts: 2})
	a, b := l.Hosts[0], l.Hosts[1]

	t.Run("cut connections", func(t *testing.T) {
		c, err := dial(t, l, a, a.HostKey)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		// A process in a session of its own (a detached activation) lives on.
		marker := "sleep 4712" + strconv.Itoa(os.Getpid())
		run(t, c, "setsid "+marker+" </dev/null >/dev/null 2>&1 &")
		n, err := a.Faults().CutConnections()
		if err != nil || n == 0 {
			t.Fatalf("cut: %d %v", n, err)
		}
		done := make(chan error, 1)
		go func() { done <- c.Wait() }()
		select {
		case <-done:
		case <-t.Context().Done():
			t.Fatal("the connection survived the cut")
		}
		if got := exec1(t, a, "sh", "-c", "pgrep -f '"+marker+"' >/dev/null && echo alive"); got != "alive" {
			t.Errorf("the detached process died with the connection")
		}
		if err := canDial(t, l, a); err != nil {
			t.Errorf("new connections fail after the cut: %v", err)
		}
	})

	t.Run("freeze", func(t *testing.T) {
		if err := a.Faults().Freeze(); err != nil {
			t.Fatal(err)
		}
		err := cannotDial(t, l, a)
		if thawErr := a.Faults().Thaw(); thawErr != nil {
			t.Fatal(thawErr)
		}
		var ne net.Error
		if err == nil || !(errors.As(err, &ne) && ne.Timeout() || strings.Contains(err.Error(), "timeout")) {
			t.Errorf("a frozen host should accept TCP and time out the handshake, got %v", err)
		}
		if err := canDial(t, l, a); err != nil {
			t.Errorf("thawed host does not answer: %v", err)
		}
	})

	t.Run("silence", func(t *testing.T) {
		if err := b.Stop(); err != nil {
			t.Fatal(err)
		}
		s, err := b.Faults().Silence()
		if err != nil {
			t.Fatal(err)
		}
		err = cannotDial(t, l, b)
		s.Close()
		if err == nil || s.Accepted() == 0 {
			t.Errorf("silent host: dial %v, %d connections accepted", err, s.Accepted())
		}
		if err := b.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		if err := canDial(t, l, b); err != nil {
			t.Errorf("host back from silence does not answer: %v", err)
		}
	})
}
