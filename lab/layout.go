package lab

import (
	"bytes"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"strings"

	"golang.org/x/sys/unix"
)

// overlays are the directories every host has of its own: the host's
// process sees Root/<dir> at <inHost>; everything else (/usr, /tmp, ...) is
// the machine's.
var overlays = []struct{ inHost, dir string }{
	{"/nix", "nix"},
	{"/run", "run"},
	{"/etc/nix", "etc-nix"},
	{"/root", "root"},
	// A boot loader's files (see bootloader.go); empty without one.
	{"/boot", "boot"},
}

// layout owns where a host's files live on this machine and how the host
// sees its directories (the overlays), both ways: path reads them from
// outside, mount binds them inside the host's mount namespace. It is apart
// from Host because all of it follows from Root alone: it is computed once
// when the host is made, never changes, and needs neither the host's lock
// nor its process.
type layout struct {
	root       string
	hostKey    string // private; the public half beside it with .pub
	sshdConfig string
	sshdLog    string // what sshd writes with -E
	console    string // what the host's init prints, and the lab's notes on it
	sshdPid    string // /run/sshd.pid as this machine sees it
	bin        string // the host's own commands, first on its sessions' PATH
}

func newLayout(root string) layout {
	f := layout{
		root:       root,
		hostKey:    filepath.Join(root, "ssh_host_ed25519_key"),
		sshdConfig: filepath.Join(root, "sshd_config"),
		sshdLog:    filepath.Join(root, "sshd.log"),
		console:    filepath.Join(root, "console.log"),
		bin:        filepath.Join(root, "bin"),
	}
	f.sshdPid = f.path("/run/sshd.pid")
	return f
}

// path is Host.Path.
func (f layout) path(p string) string {
	p = path.Clean("/" + p)
	for _, o := range overlays {
		if p == o.inHost || strings.HasPrefix(p, o.inHost+"/") {
			return filepath.Join(f.root, o.dir, strings.TrimPrefix(p, o.inHost))
		}
	}
	return p
}

// mount makes the mount namespace of the host's init (pid) its own:
// nothing mounted there shows up on this machine or the reverse, other
// labs' ip-netns mounts are gone (they would keep those namespaces alive
// after the other lab deletes them), and the host's directories are bound
// over /nix, /run, /etc/nix and /root; with hideGzip, gzip is gone from its
// PATH. Doing it with syscalls from here rather than mount(8) in the host's
// shell spares five execs per host, which were half the CPU a large lab
// took to start.
func (f layout) mount(pid int, hideGzip bool) error {
	errc := make(chan error, 1)
	go func() {
		// The thread leaves this process's filesystem context for good:
		// it stays locked, so the runtime discards it when this goroutine
		// ends.
		runtime.LockOSThread()
		errc <- f.mountIn(pid, hideGzip)
	}()
	return <-errc
}

func (f layout) mountIn(pid int, hideGzip bool) error {
	ns, err := os.Open(fmt.Sprintf("/proc/%d/ns/mnt", pid))
	if err != nil {
		return fmt.Errorf("mounts: %w", err)
	}
	defer ns.Close()
	// setns to a mount namespace needs a filesystem context of the
	// thread's own.
	if err := unix.Unshare(unix.CLONE_FS); err != nil {
		return fmt.Errorf("mounts: unshare: %w", err)
	}
	if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNS); err != nil {
		return fmt.Errorf("mounts: enter mount namespace of %d: %w", pid, err)
	}
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("mounts: make / private: %w", err)
	}
	info, err := os.ReadFile("/proc/thread-self/mountinfo")
	if err != nil {
		return fmt.Errorf("mounts: %w", err)
	}
	for _, line := range strings.Split(string(info), "\n") {
		if fields := strings.Fields(line); len(fields) > 4 && strings.HasPrefix(fields[4], "/run/netns/") && len(fields[4]) > len("/run/netns/") {
			// Already gone with an earlier detach of its parent: fine.
			unix.Unmount(fields[4], unix.MNT_DETACH)
		}
	}
	for _, o := range overlays {
		// A machine without /boot (a container, say) gets the mount
		// point; nothing is written there.
		if err := os.MkdirAll(o.inHost, 0o755); err != nil {
			return fmt.Errorf("mounts: %w", err)
		}
		if err := unix.Mount(filepath.Join(f.root, o.dir), o.inHost, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("mounts: bind %s on %s: %w", filepath.Join(f.root, o.dir), o.inHost, err)
		}
	}
	if hideGzip {
		return hideProgram("gzip")
	}
	return nil
}

// hideProgram binds /dev/null (no regular file, so no program) over every
// copy of name on the hosts' PATH, in the calling thread's namespace.
func hideProgram(name string) error {
	for _, dir := range filepath.SplitList(systemPath) {
		p := filepath.Join(dir, name)
		if fi, err := os.Lstat(p); err != nil || !fi.Mode().IsRegular() {
			continue
		}
		if err := unix.Mount("/dev/null", p, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("mounts: hide %s: %w", p, err)
		}
	}
	return nil
}

// clearRun empties the host's /run, as a boot finds it.
func (f layout) clearRun() error {
	run := f.path("/run")
	ents, err := os.ReadDir(run)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if err := os.RemoveAll(filepath.Join(run, e.Name())); err != nil {
			return err
		}
	}
	return nil
}

func (f layout) appendConsole(msg string) {
	if c, err := os.OpenFile(f.console, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644); err == nil {
		c.WriteString(msg)
		c.Close()
	}
}

// logTail is the end of what the host's shell and sshd wrote, for errors.
func (f layout) logTail() string {
	var out []byte
	for _, name := range []string{f.console, f.sshdLog} {
		data, _ := os.ReadFile(name)
		out = append(out, bytes.TrimSpace(data)...)
		out = append(out, ' ')
	}
	out = bytes.TrimSpace(out)
	if len(out) > 2000 {
		out = out[len(out)-2000:]
	}
	if len(out) == 0 {
		return "no output"
	}
	return string(out)
}
