package lab_test

import (
	"errors"
	"net"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nix-hive/nix-hive/lab"
	"github.com/nix-hive/nix-hive/lab/labtest"
)

func TestTreeTopology(t *testing.T) {
	l := labtest.New(t, lab.Config{Hosts: 1, Tree: &lab.TreeConfig{Racks: 2, PerRack: 2}})
	ctx := t.Context()

	var names, jumps []string
	for _, h := range l.Hosts {
		names = append(names, h.Name)
		jumps = append(jumps, h.Jump)
	}
	if got, want := strings.Join(names, " "), "host-1 region rack-1 rack-2 node-1-1 node-1-2 node-2-1 node-2-2"; got != want {
		t.Fatalf("hosts %q, want %q", got, want)
	}
	if got, want := strings.Join(jumps, ","), ",,region,region,rack-1,rack-1,rack-2,rack-2"; got != want {
		t.Fatalf("jumps %q, want %q", got, want)
	}
	plain, region, rack1, rack2, node11, node21 := l.Host("host-1"), l.Host("region"), l.Host("rack-1"), l.Host("rack-2"), l.Host("node-1-1"), l.Host("node-2-1")

	t.Run("only the region is reachable from here", func(t *testing.T) {
		for _, h := range []*lab.Host{region, plain} {
			c, err := net.DialTimeout("tcp", net.JoinHostPort(h.Addr, "22"), 5*time.Second)
			if err != nil {
				t.Errorf("%s unreachable at %s: %v", h.Name, h.Addr, err)
				continue
			}
			c.Close()
		}
		// A rack's address is routed only inside the region's namespace;
		// here a packet for it goes nowhere, not out of this machine.
		labtest.Unroutable(t, rack1.Addr)
		// A consumer's address is on its rack's loopback; this machine's
		// loopback has nothing listening there.
		if c, err := net.Dial("tcp", net.JoinHostPort(node11.Addr, "22")); !errors.Is(err, syscall.ECONNREFUSED) {
			if err == nil {
				c.Close()
			}
			t.Errorf("connect to %s's address %s from the root namespace: %v, want connection refused", node11.Name, node11.Addr, err)
		}
	})

	t.Run("ssh through the jump chain", func(t *testing.T) {
		for _, h := range []*lab.Host{rack2, node21} {
			out, err := exec.CommandContext(ctx, "ssh", "-F", l.SSHConfigFile, h.Name, "hostname").CombinedOutput()
			if err != nil || strings.TrimSpace(string(out)) != h.Name {
				t.Errorf("ssh -F ssh_config %s: %v: %s", h.Name, err, out)
			}
		}
	})

	t.Run("stores reach what they serve and what serves them", func(t *testing.T) {
		for _, c := range []struct{ from, to *lab.Host }{{rack1, region}, {node11, rack1}, {region, rack2}, {rack1, node11}} {
			if out, err := sshFromHost(ctx, c.from, c.to.Addr, "hostname"); err != nil || strings.TrimSpace(string(out)) != c.to.Name {
				t.Errorf("ssh %s -> %s (%s): %v: %s", c.from.Name, c.to.Name, c.to.Addr, err, out)
			}
		}
		// Racks are separate networks: a consumer's loopback address is
		// on its rack's namespace only.
		if out, err := sshFromHost(ctx, rack2, node11.Addr, "true"); err == nil {
			t.Errorf("rack-2 reaches rack-1's consumer %s: %s", node11.Name, out)
		}
	})

	t.Run("close", func(t *testing.T) {
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		labtest.HoldBlock(t, region.Addr)
		labtest.Unroutable(t, region.Addr)
		labtest.Unroutable(t, rack2.Addr)
		if got := leftovers(t, l.Dir); len(got) > 0 {
			t.Errorf("left behind by Close:\n%s", strings.Join(got, "\n"))
		}
		out, err := exec.Command("ip", "netns", "list").CombinedOutput()
		if err != nil {
			t.Fatalf("ip netns list: %v: %s", err, out)
		}
		for _, line := range strings.Split(string(out), "\n") {
			if f := strings.Fields(line); len(f) > 0 && (f[0] == l.Netns || strings.HasPrefix(f[0], l.Netns+"-")) {
				t.Errorf("network namespace %s still exists", f[0])
			}
		}
	})
}
