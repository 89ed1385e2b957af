package lab_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/nix-hive/nix-hive/internal/testenv"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/sync/errgroup"

	"github.com/nix-hive/nix-hive/lab"
	"github.com/nix-hive/nix-hive/lab/labtest"
)

func clientSigner(t *testing.T, l *lab.Lab) ssh.Signer {
	t.Helper()
	data, err := os.ReadFile(l.ClientKey)
	if err != nil {
		t.Fatal(err)
	}
	s, err := ssh.ParsePrivateKey(data)
	if err != nil {
		t.Fatalf("parse client key: %v", err)
	}
	return s
}

func sshConfig(t *testing.T, l *lab.Lab, hostKey string) *ssh.ClientConfig {
	t.Helper()
	pk, _, _, _, err := ssh.ParseAuthorizedKey([]byte(hostKey))
	if err != nil {
		t.Fatalf("parse host key %q: %v", hostKey, err)
	}
	return &ssh.ClientConfig{
		User:            "root",
		Auth:            []ssh.AuthMethod{ssh.PublicKeys(clientSigner(t, l))},
		HostKeyCallback: ssh.FixedHostKey(pk),
		// Bounds a hung handshake; not a speed assertion.
		Timeout: 30 * time.Second,
	}
}

// dial connects to h (from this machine) pinning hostKey.
func dial(t *testing.T, l *lab.Lab, h *lab.Host, hostKey string) (*ssh.Client, error) {
	t.Helper()
	return dialWith(h, sshConfig(t, l, hostKey))
}

func dialWith(h *lab.Host, cfg *ssh.ClientConfig) (*ssh.Client, error) {
	return ssh.Dial("tcp", net.JoinHostPort(h.Addr, strconv.Itoa(h.Port)), cfg)
}

func run(t *testing.T, c *ssh.Client, cmd string) string {
	t.Helper()
	s, err := c.NewSession()
	if err != nil {
		t.Fatalf("session: %v", err)
	}
	defer s.Close()
	out, err := s.CombinedOutput(cmd)
	if err != nil {
		t.Fatalf("%s: %v: %s", cmd, err, out)
	}
	return strings.TrimSpace(string(out))
}

func exec1(t *testing.T, h *lab.Host, args ...string) string {
	t.Helper()
	out, err := h.Exec(t.Context(), args...)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(out))
}

// sshFromHost runs the OpenSSH client inside h, with h's own /root/.ssh.
func sshFromHost(ctx context.Context, h *lab.Host, addr, cmd string) ([]byte, error) {
	return h.Exec(ctx, "ssh", "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
		"-o", "ConnectTimeout=10", "root@"+addr, cmd)
}

// leftovers lists processes whose command line mentions dir and mounts
// under dir.
func leftovers(t *testing.T, dir string) []string {
	t.Helper()
	var found []string
	out, err := exec.Command("pgrep", "-af", regexp.QuoteMeta(dir)).Output()
	var exit *exec.ExitError
	switch {
	case err == nil:
		found = append(found, "processes: "+strings.TrimSpace(string(out)))
	case errors.As(err, &exit) && exit.ExitCode() == 1: // none
	default:
		t.Fatalf("pgrep: %v", err)
	}
	mounts, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(mounts), "\n") {
		if strings.Contains(line, dir) {
			found = append(found, "mount: "+line)
		}
	}
	return found
}

// waitFor is testenv.WaitFor: things the kernel does asynchronously
// (signal delivery) are waited for this way, not with a sleep.
func waitFor(t *testing.T, what string, cond func() bool) { testenv.WaitFor(t, what, cond) }

func TestPlainHosts(t *testing.T) {
	labtest.Require(t)
	ctx := t.Context()
	l, err := lab.Start(ctx, lab.Config{Hosts: 3})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })

	var names []string
	for _, h := range l.Hosts {
		names = append(names, h.Name)
	}
	if got := strings.Join(names, " "); got != "host-1 host-2 host-3" {
		t.Fatalf("hosts %q, want host-1 host-2 host-3", got)
	}
	a, b := l.Hosts[0], l.Hosts[1]

	t.Run("answers with its host key", func(t *testing.T) {
		for _, h := range l.Hosts {
			c, err := dial(t, l, h, h.HostKey)
			if err != nil {
				t.Fatalf("%s: %v", h.Name, err)
			}
			if got := run(t, c, "ls -A /nix/store"); got != "" {
				t.Errorf("%s: /nix/store holds %q, want an empty store", h.Name, got)
			}
			if got := run(t, c, "nix --version"); !strings.Contains(got, "nix (Nix) ") {
				t.Errorf("%s: nix --version = %q", h.Name, got)
			}
			if got := run(t, c, "echo $HOME"); got != "/root" {
				t.Errorf("%s: HOME = %q, want /root", h.Name, got)
			}
			if got := run(t, c, "hostname"); got != h.Name {
				t.Errorf("%s: hostname = %q", h.Name, got)
			}
			c.Close()
		}
		// Another host's key must be refused: the keys are per host.
		if c, err := dial(t, l, a, b.HostKey); err == nil {
			c.Close()
			t.Errorf("%s accepted with %s's host key", a.Name, b.Name)
		}
	})

	t.Run("own store", func(t *testing.T) {
		src := filepath.Join(t.TempDir(), "lab-own-store-"+strconv.FormatInt(time.Now().UnixNano(), 36))
		if err := os.WriteFile(src, []byte("only on "+a.Name+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		p := exec1(t, a, "nix-store", "--add", src)
		if !strings.HasPrefix(p, "/nix/store/") {
			t.Fatalf("nix-store --add printed %q", p)
		}
		if _, err := os.Stat(a.Path(p)); err != nil {
			t.Errorf("%s not in %s's store directory: %v", p, a.Name, err)
		}
		if out, err := b.Exec(ctx, "test", "-e", p); err == nil {
			t.Errorf("%s exists on %s too (%s)", p, b.Name, out)
		}
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s in this machine's store: %v", p, err)
		}
	})

	t.Run("own nix.conf", func(t *testing.T) {
		if err := a.WriteNixConf("max-jobs = 7"); err != nil {
			t.Fatal(err)
		}
		if got := exec1(t, a, "nix", "show-config"); !strings.Contains(got, "max-jobs = 7") {
			t.Errorf("%s: nix show-config lacks max-jobs = 7:\n%s", a.Name, got)
		}
		if got := exec1(t, b, "nix", "show-config"); strings.Contains(got, "max-jobs = 7") {
			t.Errorf("%s sees %s's nix.conf", b.Name, a.Name)
		}
	})

	t.Run("hosts reach each other", func(t *testing.T) {
		out, err := sshFromHost(ctx, a, b.Addr, "ls -A /nix/store")
		if err != nil {
			t.Fatalf("ssh %s -> %s: %v", a.Name, b.Name, err)
		}
		if strings.TrimSpace(string(out)) != "" {
			t.Errorf("%s's store seen from %s: %q, want empty", b.Name, a.Name, out)
		}
	})

	t.Run("pid namespace", func(t *testing.T) {
		// pid 1 is the host's init; sshd is a daemon under it, so it can
		// stop (a system that disables it) while the host lives.
		if got := exec1(t, a, "cat", "/proc/1/comm"); got != "sh" {
			t.Errorf("pid 1 of %s is %q, want the lab's init (sh)", a.Name, got)
		}
		if got := exec1(t, a, "sh", "-c", "cat /proc/$(cat /run/sshd.pid)/comm"); got != "sshd" {
			t.Errorf("/run/sshd.pid of %s names %q, want sshd", a.Name, got)
		}
		// A process started over ssh, detached from the session, must die
		// with the host.
		marker := "sleep 4711" + strconv.Itoa(os.Getpid())
		c, err := dial(t, l, a, a.HostKey)
		if err != nil {
			t.Fatal(err)
		}
		run(t, c, "setsid "+marker+" </dev/null >/dev/null 2>&1 &")
		c.Close()
		if err := exec.Command("pgrep", "-f", marker).Run(); err != nil {
			t.Fatalf("%q not running on %s: %v", marker, a.Name, err)
		}
		if err := a.Stop(); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command("pgrep", "-af", marker).Output(); err == nil {
			t.Errorf("still running after Stop: %s", out)
		}
		if err := a.Start(ctx); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("cancelled Exec ends the command", func(t *testing.T) {
		marker := "4712" + strconv.Itoa(os.Getpid())
		cctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() {
			_, err := b.Exec(cctx, "sleep", marker)
			done <- err
		}()
		waitFor(t, "sleep "+marker+" to start", func() bool {
			return exec.Command("pgrep", "-f", "^sleep "+marker).Run() == nil
		})
		cancel()
		if err := <-done; err == nil {
			t.Error("cancelled Exec returned no error")
		}
		waitFor(t, "sleep "+marker+" to end", func() bool {
			return exec.Command("pgrep", "-f", "^sleep "+marker).Run() != nil
		})
	})

	t.Run("stop and start", func(t *testing.T) {
		p := exec1(t, a, "sh", "-c", "echo kept > /run/stop-start-marker && echo ok")
		if p != "ok" {
			t.Fatalf("write marker: %q", p)
		}
		if err := a.Stop(); err != nil {
			t.Fatal(err)
		}
		if err := a.Stop(); err != nil {
			t.Errorf("second Stop: %v", err)
		}
		_, err := net.Dial("tcp", net.JoinHostPort(a.Addr, "22"))
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("dial stopped %s: %v, want connection refused", a.Name, err)
		}
		if _, err := a.Exec(ctx, "true"); err == nil {
			t.Errorf("Exec on stopped %s succeeded", a.Name)
		}
		if err := a.Start(ctx); err != nil {
			t.Fatal(err)
		}
		c, err := dial(t, l, a, a.HostKey)
		if err != nil {
			t.Fatalf("after restart: %v", err)
		}
		if got := run(t, c, "cat /run/stop-start-marker"); got != "kept" {
			t.Errorf("marker after restart: %q", got)
		}
		c.Close()
	})

	t.Run("replace host key", func(t *testing.T) {
		old := a.HostKey
		if err := a.ReplaceHostKey(ctx); err != nil {
			t.Fatal(err)
		}
		if a.HostKey == old {
			t.Fatal("host key unchanged")
		}
		if c, err := dial(t, l, a, old); err == nil {
			c.Close()
			t.Fatal("the old host key still works")
		}
		c, err := dial(t, l, a, a.HostKey)
		if err != nil {
			t.Fatalf("new host key: %v", err)
		}
		c.Close()
		if !strings.Contains(l.KnownHosts(), a.HostKey) || strings.Contains(l.KnownHosts(), old) {
			t.Errorf("KnownHosts not updated:\n%s", l.KnownHosts())
		}
		// The other hosts' known_hosts follow.
		if out, err := sshFromHost(ctx, b, a.Addr, "true"); err != nil {
			t.Errorf("ssh %s -> %s after key change: %v: %s", b.Name, a.Name, err, out)
		}
	})

	t.Run("close", func(t *testing.T) {
		if got := leftovers(t, l.Dir); len(got) == 0 {
			t.Fatalf("found no processes of the running lab by %s: the check below would prove nothing", l.Dir)
		}
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		if got := leftovers(t, l.Dir); len(got) > 0 {
			t.Errorf("left behind by Close:\n%s", strings.Join(got, "\n"))
		}
		if _, err := os.Stat(l.Dir); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("temporary lab dir not removed: %v", err)
		}
		if err := l.Close(); err != nil {
			t.Errorf("second Close: %v", err)
		}
	})
}

func TestJumpTopology(t *testing.T) {
	l := labtest.New(t, lab.Config{Hosts: 1, Internal: 2})
	ctx := t.Context()

	var names []string
	for _, h := range l.Hosts {
		names = append(names, h.Name)
	}
	if got := strings.Join(names, " "); got != "portico host-1 int-1 int-2" {
		t.Fatalf("hosts %q, want portico host-1 int-1 int-2", got)
	}
	jump, plain, int1, int2 := l.Hosts[0], l.Hosts[1], l.Hosts[2], l.Hosts[3]
	if int1.Jump != "portico" || jump.Jump != "" || plain.Jump != "" {
		t.Errorf("Jump fields: %q %q %q", jump.Jump, plain.Jump, int1.Jump)
	}
	if err := int1.WriteNixConf("# this is int-1"); err != nil {
		t.Fatal(err)
	}

	t.Run("HiveNix", func(t *testing.T) {
		out, err := exec.CommandContext(ctx, "nix-instantiate", "--eval", "--strict", "--json", "--expr", l.HiveNix()).Output()
		if err != nil {
			t.Fatalf("nix-instantiate: %v\n%s", err, l.HiveNix())
		}
		type instance struct {
			Host    string            `json:"host"`
			Port    int               `json:"port"`
			User    string            `json:"user"`
			HostKey string            `json:"hostKey"`
			Jump    string            `json:"jump"`
			SSH     map[string]string `json:"ssh"`
		}
		var got map[string]instance
		if err := json.Unmarshal(out, &got); err != nil {
			t.Fatal(err)
		}
		want := map[string]instance{}
		for _, h := range l.Hosts {
			want[h.Name] = instance{h.Addr, 22, "root", h.HostKey, h.Jump, map[string]string{"IdentityFile": l.ClientKey}}
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("HiveNix evaluates to\n%+v\nwant\n%+v", got, want)
		}
	})

	t.Run("internal hosts unreachable from here", func(t *testing.T) {
		for _, h := range []*lab.Host{int1, int2} {
			c, err := net.DialTimeout("tcp", net.JoinHostPort(h.Addr, "22"), 5*time.Second)
			if err == nil {
				c.Close()
				t.Errorf("%s reachable at %s from the root namespace", h.Name, h.Addr)
			}
		}
		if out, err := sshFromHost(ctx, plain, int1.Addr, "true"); err == nil {
			t.Errorf("plain host %s reaches %s: %s", plain.Name, int1.Name, out)
		}
	})

	t.Run("ssh -J through the jump host", func(t *testing.T) {
		out, err := exec.CommandContext(ctx, "ssh", "-F", l.SSHConfigFile,
			"-J", "root@"+jump.Addr, "root@"+int1.Addr, "hostname; cat /etc/nix/nix.conf").CombinedOutput()
		if err != nil {
			t.Fatalf("ssh -J: %v: %s", err, out)
		}
		if !strings.HasPrefix(string(out), "int-1\n") || !strings.Contains(string(out), "# this is int-1") {
			t.Errorf("ssh -J reached another host: nix.conf is\n%s", out)
		}
		// The generated config names the jump host by itself.
		if out, err := exec.CommandContext(ctx, "ssh", "-F", l.SSHConfigFile, int2.Name, "true").CombinedOutput(); err != nil {
			t.Errorf("ssh -F ssh_config %s: %v: %s", int2.Name, err, out)
		}
	})

	t.Run("x/crypto through the jump host", func(t *testing.T) {
		bastion, err := dial(t, l, jump, jump.HostKey)
		if err != nil {
			t.Fatal(err)
		}
		defer bastion.Close()
		addr := net.JoinHostPort(int2.Addr, strconv.Itoa(int2.Port))
		conn, err := bastion.Dial("tcp", addr)
		if err != nil {
			t.Fatalf("dial %s via %s: %v", addr, jump.Name, err)
		}
		cc, chans, reqs, err := ssh.NewClientConn(conn, addr, sshConfig(t, l, int2.HostKey))
		if err != nil {
			t.Fatalf("handshake with %s via %s: %v", int2.Name, jump.Name, err)
		}
		c := ssh.NewClient(cc, chans, reqs)
		defer c.Close()
		if got := run(t, c, "ls -A /nix/store; echo $HOME"); got != "/root" {
			t.Errorf("%s: %q", int2.Name, got)
		}
	})

	t.Run("internal hosts reach each other and the jump host", func(t *testing.T) {
		for _, addr := range []string{int2.Addr, jump.InternalAddr, jump.Addr} {
			if out, err := sshFromHost(ctx, int1, addr, "true"); err != nil {
				t.Errorf("ssh %s -> %s: %v: %s", int1.Name, addr, err, out)
			}
		}
	})

	t.Run("the jump host is reached through the uplink", func(t *testing.T) {
		out, err := exec.CommandContext(ctx, "ip", "-o", "route", "get", jump.Addr).CombinedOutput()
		if err != nil || !strings.Contains(string(out), " dev "+l.Uplink+" ") {
			t.Errorf("ip route get %s: %v: %s; want it through %s", jump.Addr, err, out, l.Uplink)
		}
	})

	t.Run("close", func(t *testing.T) {
		if l.Netns == "" {
			t.Fatal("Lab.Netns is empty")
		}
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		// The jump host's address leads nowhere once the lab is gone:
		// not out through this machine's default route.
		labtest.HoldBlock(t, jump.Addr)
		labtest.Unroutable(t, jump.Addr)
		if got := leftovers(t, l.Dir); len(got) > 0 {
			t.Errorf("left behind by Close:\n%s", strings.Join(got, "\n"))
		}
		out, err := exec.Command("ip", "netns", "list").CombinedOutput()
		if err != nil {
			t.Fatalf("ip netns list: %v: %s", err, out)
		}
		for _, line := range strings.Split(string(out), "\n") {
			if f := strings.Fields(line); len(f) > 0 && f[0] == l.Netns {
				t.Errorf("network namespace %s still exists", l.Netns)
			}
		}
		if out, err := exec.Command("ip", "-o", "addr", "show", "to", jump.Addr+"/30").CombinedOutput(); err != nil || len(strings.TrimSpace(string(out))) > 0 {
			t.Errorf("veth of %s still configured: %v: %s", jump.Addr, err, out)
		}
	})
}

// TestKilledOwnerLeavesNoHosts kills a process that runs a lab, as a
// crashed or timed-out test binary would be, and checks its hosts died with
// it.
func TestKilledOwnerLeavesNoHosts(t *testing.T) {
	labtest.Require(t)
	ctx := t.Context()
	dir := t.TempDir()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestHelperLabOwner$", "-test.v")
	cmd.Env = append(os.Environ(), "NIX_HIVE_LAB_HELPER_DIR="+dir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ready := false
	var lines []string
	for sc := bufio.NewScanner(out); sc.Scan(); {
		lines = append(lines, sc.Text())
		if sc.Text() == "LAB READY" {
			ready = true
			break
		}
	}
	if !ready {
		cmd.Wait()
		t.Fatalf("helper did not start its lab:\n%s", strings.Join(lines, "\n"))
	}
	if got := leftovers(t, dir); len(got) == 0 {
		t.Fatalf("helper's lab runs no processes mentioning %s", dir)
	}
	cmd.Process.Kill()
	cmd.Wait()
	// The kernel delivers the death signal and empties the pid namespaces
	// on its own schedule; poll for it.
	waitFor(t, "the killed owner's hosts to die", func() bool { return len(leftovers(t, dir)) == 0 })
	if inUse, err := lab.InUse(dir); err != nil || inUse {
		t.Errorf("InUse(%s) = %v, %v after the owner died", dir, inUse, err)
	}
	// The directory is reusable: a new lab replaces the dead one's hosts.
	l := labtest.New(t, lab.Config{Hosts: 1, Dir: dir})
	if got := exec1(t, l.Hosts[0], "ls", "-A", "/nix/store"); got != "" {
		t.Errorf("new lab in %s inherited a store: %q", dir, got)
	}
}

// TestHelperLabOwner is the process TestKilledOwnerLeavesNoHosts kills.
func TestHelperLabOwner(t *testing.T) {
	dir := os.Getenv("NIX_HIVE_LAB_HELPER_DIR")
	if dir == "" {
		t.Skip("runs only as TestKilledOwnerLeavesNoHosts's helper process")
	}
	_, err := lab.Start(context.Background(), lab.Config{Hosts: 2, Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if inUse, err := lab.InUse(dir); err != nil || !inUse {
		t.Fatalf("InUse(%s) = %v, %v while the lab runs", dir, inUse, err)
	}
	if _, err := lab.Start(context.Background(), lab.Config{Hosts: 1, Dir: dir}); err == nil {
		t.Fatal("a second lab started in a directory in use")
	}
	fmt.Println("LAB READY")
	select {} // until killed
}

func TestFiftyHosts(t *testing.T) {
	if testing.Short() {
		t.Skip("starts 50 hosts; skipped with -short")
	}
	labtest.Require(t)
	start := time.Now()
	l := labtest.New(t, lab.Config{Hosts: 50})
	t.Logf("50 hosts accepting SSH %v after Start was called", time.Since(start))

	start = time.Now()
	var g errgroup.Group
	for _, h := range l.Hosts {
		cfg := sshConfig(t, l, h.HostKey)
		g.Go(func() error {
			c, err := ssh.Dial("tcp", net.JoinHostPort(h.Addr, "22"), cfg)
			if err != nil {
				return fmt.Errorf("%s: %w", h.Name, err)
			}
			defer c.Close()
			s, err := c.NewSession()
			if err != nil {
				return fmt.Errorf("%s: %w", h.Name, err)
			}
			defer s.Close()
			if out, err := s.CombinedOutput("ls -A /nix/store"); err != nil || len(out) > 0 {
				return fmt.Errorf("%s: ls -A /nix/store: %v: %q", h.Name, err, out)
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	t.Logf("50 parallel SSH logins with one command: %v", time.Since(start))
}
