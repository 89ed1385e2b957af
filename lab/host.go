package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nix-hive/nix-hive/shell"
)

const (
	sshdPath       = "/usr/sbin/sshd"
	sftpServerPath = "/usr/lib/openssh/sftp-server"
	sshPort        = 22
)

// initialNixConf makes a host behave like a fleet member with no daemon, no
// build users and no binary cache: substituters are what a deploy configures.
const initialNixConf = `sandbox = false
experimental-features = nix-command flakes
substituters =
require-sigs = true
build-users-group =
`

// systemPath is the PATH an ssh session as root gets from Debian's sshd.
const systemPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// env is the environment of the host's processes, the one an ssh session
// as root gets: the caller's (NIX_CONFIG, say) must not leak into a host.
// The host's own bin directory (lab-service, reboot) comes first.
func (h *Host) env() []string {
	return []string{"PATH=" + h.path(), "NIX_CONF_DIR=/etc/nix", "HOME=/root", "USER=root", "LOGNAME=root", "SHELL=/bin/bash"}
}

// path is the PATH of the host's sessions: its own commands, then its
// Nix, then the system's.
func (h *Host) path() string {
	p := h.files.bin
	if h.Nix != "" {
		p += ":" + h.Nix
	}
	return p + ":" + systemPath
}

// Host is one lab host: an sshd in its own mount, pid and UTS namespaces
// (its hostname is its Name). It owns the host's life: its configuration
// and its init's start, stop and reboot, which its lock serialises, and
// the commands run inside. What is fixed when the host is made stays out
// of it (files, firewall), and so do the faults a test injects (Faults).
type Host struct {
	Name string
	// Addr is the IP the deploy host dials; for internal hosts, the IP the
	// jump host dials.
	Addr string
	Port int
	// HostKey is the public host key in authorized_keys format, no comment.
	HostKey string
	// Root is the per-host directory holding nix/, run/, etc-nix/, root/.
	Root string
	// Jump is the name of the jump host for internal hosts, "" otherwise.
	Jump string
	// InternalAddr is set on the jump host only: its loopback address in the
	// internal network. Internal hosts can reach it there and at Addr.
	InternalAddr string
	// Nix is the bin directory of the Nix the host runs.
	Nix string

	lab      *Lab
	files    layout
	firewall firewall
	netns    string   // network namespace file; "" for the root namespace
	listen   []string // addresses sshd listens on
	sshd     string   // extra sshd_config lines, read before the lab's own
	loader   string   // the emulated boot loader (bootloader.go), "" for none

	mu    sync.Mutex
	boots int
	proc  *exec.Cmd     // nil while stopped
	done  chan struct{} // closed when proc has been reaped
	exit  error         // proc's Wait result, valid after done
}

// newHost makes the host called name in lab l, its directory under
// l.Dir. What follows from its name and addresses is worked out here,
// once: a host never moves.
func newHost(l *Lab, name, addr, jump, netns string, listen ...string) *Host {
	root := filepath.Join(l.Dir, "hosts", name)
	return &Host{
		Name: name, Addr: addr, Port: sshPort, Jump: jump, Root: root, Nix: l.nixFor[name],
		lab: l, files: newLayout(root), firewall: newFirewall(addr, netns),
		netns: netns, listen: listen, loader: l.bootLoader[name],
	}
}

// Path returns where a file inside the host lives on this machine, e.g.
// Path("/run/current-system") is Root+"/run/current-system". Paths outside
// the host's own directories are shared with this machine and returned as
// they are. A symlink read this way points into the host's view (/nix/store
// means Path("/nix/store")).
func (h *Host) Path(p string) string { return h.files.path(p) }

// HostKeyFile is the host's private host key (its public half beside it,
// with .pub), for tests that sign it into a host certificate.
func (h *Host) HostKeyFile() string { return h.files.hostKey }

// prepare creates the host's directories, host key and configuration.
func (h *Host) prepare() error {
	for _, o := range overlays {
		if err := os.MkdirAll(filepath.Join(h.files.root, o.dir), 0o755); err != nil {
			return fmt.Errorf("prepare host %s: %w", h.Name, err)
		}
	}
	// An empty store; nix creates /nix/var itself on first use. /run/sshd is
	// sshd's privilege separation directory.
	for _, d := range []string{"/nix/store", "/run/sshd", "/root/.ssh"} {
		if err := os.MkdirAll(h.Path(d), 0o755); err != nil {
			return fmt.Errorf("prepare host %s: %w", h.Name, err)
		}
	}
	if err := os.WriteFile(h.Path("/etc/nix/nix.conf"), []byte(initialNixConf), 0o644); err != nil {
		return fmt.Errorf("prepare host %s: %w", h.Name, err)
	}
	// The host's root gets the lab's client key so hosts can ssh to each
	// other (a consumer substituting from ssh://root@STORE).
	for _, suffix := range []string{"", ".pub"} {
		data, err := os.ReadFile(h.lab.ClientKey + suffix)
		if err == nil {
			err = os.WriteFile(h.Path("/root/.ssh/id_ed25519"+suffix), data, 0o600)
		}
		if err != nil {
			return fmt.Errorf("prepare host %s: copy client key: %w", h.Name, err)
		}
	}
	key, err := writeKeyPair(h.files.hostKey, "root@"+h.Name)
	if err != nil {
		return fmt.Errorf("prepare host %s: %w", h.Name, err)
	}
	h.HostKey = key
	if err := os.MkdirAll(h.files.bin, 0o755); err != nil {
		return fmt.Errorf("prepare host %s: %w", h.Name, err)
	}
	scripts := map[string]string{"lab-service": h.serviceScript(), "reboot": rebootScript}
	maps.Copy(scripts, bootScripts(h.loader))
	for name, text := range scripts {
		if err := writeFileAtomic(filepath.Join(h.files.bin, name), []byte(text), 0o755); err != nil {
			return fmt.Errorf("prepare host %s: %w", h.Name, err)
		}
	}
	return writeFileAtomic(h.files.sshdConfig, []byte(h.sshdConfig()), 0o644)
}

// rebootScript is the host's reboot: its init (see script) exits with 129
// on SIGHUP, and the lab starts the host again as a boot would, with an
// empty /run.
const rebootScript = `#!/bin/sh
# The lab's reboot: the host's init restarts it with an empty /run.
kill -HUP 1
`

// serviceScript is the host's stand-in for a NixOS host's service manager
// and firewall: the test systems' switch-to-configuration calls it to
// start or stop sshd and to block or open port 22, as switching to a
// NixOS configuration would.
func (h *Host) serviceScript() string {
	addrs := strings.Join(h.listen, ", ")
	return fmt.Sprintf(`#!/bin/sh
# lab-service: what switching a NixOS system does to sshd and the firewall.
set -e
case "$1" in
sshd-start)
  if [ -f /run/sshd.pid ] && kill -0 "$(cat /run/sshd.pid)" 2>/dev/null; then exit 0; fi
  mkdir -p /run/sshd
  rm -f /run/sshd.pid
  %[1]s -f %[2]s -E %[3]s
  # sshd forks before it listens and writes its pid file once it does.
  i=0
  while [ ! -s /run/sshd.pid ]; do
    i=$((i + 1)); [ $i -le 100 ] || { echo "lab-service: sshd did not start" >&2; exit 1; }
    sleep 0.05
  done ;;
sshd-stop)
  # kill only sends SIGTERM: sshd may accept a while longer. It has
  # stopped listening once it is gone (or a zombie).
  if [ -f /run/sshd.pid ]; then
    p=$(cat /run/sshd.pid)
    kill "$p" 2>/dev/null || :
    rm -f /run/sshd.pid
    i=0
    while kill -0 "$p" 2>/dev/null && ! grep -q '^State:.*Z' "/proc/$p/status" 2>/dev/null; do
      i=$((i + 1)); [ $i -le 200 ] || { echo "lab-service: sshd did not stop" >&2; exit 1; }
      sleep 0.05
    done
  fi ;;
firewall-block-ssh)
  nft delete table inet %[4]s 2>/dev/null || :
  nft -f - <<EOF
table inet %[4]s {
  chain input { type filter hook input priority 0; ip daddr { %[5]s } tcp dport %[6]d drop; }
}
EOF
  ;;
firewall-open)
  nft delete table inet %[4]s 2>/dev/null || : ;;
*)
  echo "usage: lab-service sshd-start|sshd-stop|firewall-block-ssh|firewall-open" >&2; exit 2 ;;
esac
`, sshdPath, shell.Quote(h.files.sshdConfig), shell.Quote(h.files.sshdLog), h.firewall.table, addrs, h.Port)
}

func (h *Host) sshdConfig() string {
	var b strings.Builder
	// First: sshd keeps the first value it reads for most options, so
	// these override the lab's (AuthorizedKeysFile none, say).
	b.WriteString(h.sshd)
	for _, a := range h.listen {
		fmt.Fprintf(&b, "ListenAddress %s\n", net.JoinHostPort(a, strconv.Itoa(h.Port)))
	}
	// Paths are checked by validDir to need no quoting here.
	fmt.Fprintf(&b, "HostKey %s\n", h.files.hostKey)
	fmt.Fprintf(&b, "AuthorizedKeysFile %s\n", h.lab.authorizedKeysFile())
	// Sessions find the host's own commands first, as a NixOS host's
	// sessions find its system's.
	// A hand-built Nix reads its own sysconfdir unless told: the host's
	// nix.conf is /etc/nix, whichever Nix it runs.
	fmt.Fprintf(&b, "SetEnv PATH=%s NIX_CONF_DIR=/etc/nix\n", h.path())
	if !slices.Contains(h.lab.noSFTP, h.Name) {
		fmt.Fprintf(&b, "Subsystem sftp %s\n", sftpServerPath)
	}
	b.WriteString(`PidFile /run/sshd.pid
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
MaxSessions 200
MaxStartups 200
UseDNS no
PrintMotd no
PrintLastLog no
LogLevel ERROR
`)
	return b.String()
}

// script is what runs as pid 1 of the host's namespaces: it sets the host
// up, boots (points /run/current-system at the system profile when /run is
// empty, as after a reboot), starts sshd as a daemon and stays, like an
// init: sshd may stop (a system that disables it) while the host lives.
// SIGHUP (the host's reboot) makes it exit with 129, which the lab takes
// as a reboot.
func (h *Host) script() string {
	var b strings.Builder
	b.WriteString("set -e\n")
	// The lab sets up the host's mounts from outside (layout.mount) once the
	// shell says on fd 4 that it runs (nsenter has entered the network
	// namespace through a file under /run/netns, which layout.mount hides),
	// and then writes a line to fd 3.
	b.WriteString("echo >&4\nexec 4>&-\nread -r _ <&3\nexec 3<&-\n")
	// A /proc of the host's own pid namespace: ps inside shows the host only.
	b.WriteString("mount -t proc proc /proc\n")
	fmt.Fprintf(&b, "echo %s >/proc/sys/kernel/hostname\n", shell.Quote(h.Name))
	if h.loader != "" {
		b.WriteString(bootInit())
	}
	b.WriteString(`[ -d /run/sshd ] || mkdir -p /run/sshd
p=/nix/var/nix/profiles/system
if [ ! -e /run/current-system ] && [ -e $p ]; then
  ln -s "$(readlink -f $p)" /run/current-system
  ln -s "$(readlink -f $p)" /run/booted-system
fi
trap 'exit 129' HUP
`)
	// -r: no re-exec of sshd per connection. Re-exec gives each
	// connection a fresh address-space layout, which a lab of hosts
	// sharing one machine does not need, and it is most of what an SSH
	// connection costs this machine's CPU (an execve and a config and
	// host-key load each time): about 40% of every connection here.
	fmt.Fprintf(&b, "%s -r -f %s -E %s\n", sshdPath, shell.Quote(h.files.sshdConfig), shell.Quote(h.files.sshdLog))
	b.WriteString("while :; do sleep 3600 & wait $! || :; done\n")
	return b.String()
}

// hangupIgnored says whether this process ignores SIGHUP (it was started
// under nohup, say): its children inherit that.
var hangupIgnored = sync.OnceValue(func() bool {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return false
	}
	return sigIgnored(string(b), syscall.SIGHUP)
})

// sigIgnored reads the SigIgn mask of a /proc/PID/status text.
func sigIgnored(status string, sig syscall.Signal) bool {
	for _, l := range strings.Split(status, "\n") {
		if v, ok := strings.CutPrefix(l, "SigIgn:"); ok {
			mask, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return err == nil && mask&(1<<(uint(sig)-1)) != 0
		}
	}
	return false
}

// rebootExit is the init's exit status when the host reboots.
const rebootExit = 129

// Start starts the host again with the same key, address and store (and
// /run: unlike a reboot, /run/current-system survives) and returns once sshd
// accepts connections. Starting a running host is an error.
func (h *Host) Start(ctx context.Context) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.startLocked(ctx)
}

func (h *Host) startLocked(ctx context.Context) error {
	if h.proc != nil {
		return fmt.Errorf("start host %s: already running", h.Name)
	}
	if err := os.Remove(h.files.sshdPid); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("start host %s: %w", h.Name, err)
	}
	console, err := os.OpenFile(h.files.console, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("start host %s: %w", h.Name, err)
	}
	defer console.Close()

	cmd := h.command(console)
	// fd 3: the lab releases the shell once the mounts are done; fd 4:
	// the shell says it has started.
	mountsDone, release, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("start host %s: %w", h.Name, err)
	}
	defer release.Close()
	started, shellUp, err := os.Pipe()
	if err != nil {
		mountsDone.Close()
		return fmt.Errorf("start host %s: %w", h.Name, err)
	}
	defer started.Close()
	cmd.ExtraFiles = []*os.File{mountsDone, shellUp}
	err = startPinned(cmd)
	mountsDone.Close()
	shellUp.Close()
	if err != nil {
		return fmt.Errorf("start host %s: %w", h.Name, err)
	}
	// EOF instead of a line: the shell (or nsenter before it) failed.
	if _, err = started.Read(make([]byte, 1)); err == nil {
		if err = h.files.mount(cmd.Process.Pid, slices.Contains(h.lab.noGzip, h.Name)); err == nil {
			_, err = release.Write([]byte("mounted\n"))
		}
	}
	if err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		return fmt.Errorf("start host %s: %w: %s", h.Name, err, h.files.logTail())
	}
	release.Close()
	h.watch(cmd)
	if err := h.waitReady(ctx); err != nil {
		h.stopLocked()
		return fmt.Errorf("start host %s: %w", h.Name, err)
	}
	return nil
}

// command is the host's init: a shell in new mount, pid and UTS
// namespaces (and the host's network namespace), writing to console.
func (h *Host) command(console *os.File) *exec.Cmd {
	argv := []string{"/bin/sh", "-c", h.script()}
	if hangupIgnored() {
		// A shell cannot trap a signal ignored when it started, so under
		// nohup (which the host's init would inherit) the host's reboot
		// would do nothing: env hands the shell SIGHUP at its default.
		argv = append([]string{"env", "--default-signal=HUP"}, argv...)
	}
	if h.netns != "" {
		// nsenter without -p execs instead of forking, so the shell stays
		// the init of the new pid namespace.
		argv = append([]string{"nsenter", "--net=" + h.netns, "--"}, argv...)
	}
	// Not CommandContext: the host outlives ctx, which bounds only the wait.
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = "/"
	cmd.Env = h.env()
	cmd.Stdout = console
	cmd.Stderr = console
	cmd.SysProcAttr = &syscall.SysProcAttr{
		// A UTS namespace too, so `hostname` on a host says which it is.
		Cloneflags: syscall.CLONE_NEWNS | syscall.CLONE_NEWPID | syscall.CLONE_NEWUTS,
		// A killed test binary must not leave hosts behind; the kernel
		// then kills the whole pid namespace.
		Pdeathsig: syscall.SIGKILL,
		// Ctrl-C on a terminal goes to the lab's owner, which tears down.
		Setpgid: true,
	}
	return cmd
}

// watch records the host's end, and boots it again when its init exited
// for a reboot.
func (h *Host) watch(cmd *exec.Cmd) {
	done := make(chan struct{})
	h.proc, h.done = cmd, done
	go func() {
		// Wait returns only when every process of the pid namespace is
		// gone: the kernel reaps them before the namespace's init.
		err := cmd.Wait()
		h.exit = err
		close(done)
		if ee, ok := err.(*exec.ExitError); ok && ee.ExitCode() == rebootExit {
			h.reboot(cmd)
		}
	}()
}

// reboot starts the host again after its init exited for a reboot, as a
// boot would: /run empty, the firewall open. A host stopped meanwhile stays
// stopped.
func (h *Host) reboot(cmd *exec.Cmd) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.proc != cmd {
		return
	}
	h.proc, h.done = nil, nil
	err := h.files.clearRun()
	if err == nil {
		h.firewall.open()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		err = h.startLocked(ctx)
	}
	if err != nil {
		h.files.appendConsole(fmt.Sprintf("lab: reboot of %s failed: %v\n", h.Name, err))
		return
	}
	h.boots++
}

// LogTail is the end of what the host's init and sshd wrote, with the
// lab's notes on it (a reboot that failed to start the host again): for a
// test that gives up on the host to say why.
func (h *Host) LogTail() string { return h.files.logTail() }

// PowerCycle reboots the host from outside, as an operator's power
// cycle would a host that hangs: its init (up, or hung in a failed
// boot) exits for a reboot, and the lab boots it again (Boots counts
// it once it is up).
func (h *Host) PowerCycle() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.proc == nil {
		return fmt.Errorf("power cycle host %s: not running", h.Name)
	}
	if err := h.proc.Process.Signal(syscall.SIGHUP); err != nil {
		return fmt.Errorf("power cycle host %s: %w", h.Name, err)
	}
	return nil
}

// Boots counts the reboots the host went through.
func (h *Host) Boots() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.boots
}

// waitReady waits until sshd accepts connections on the host's addresses:
// sshd writes its pid file only after it listens. Watching the file rather
// than connecting spares each host an sshd re-exec for the probe
// connection, which dominated the start of large labs; it also works
// alike for hosts in any network namespace.
func (h *Host) waitReady(ctx context.Context) error {
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		// sshd writes "PID\n" in one go; the newline says it is complete.
		data, err := os.ReadFile(h.files.sshdPid)
		if err == nil && bytes.HasSuffix(data, []byte("\n")) {
			return nil
		}
		if h.loader != "" {
			// A boot that failed is up too, without sshd, until its
			// watchdog reboots it (see bootInit).
			if _, err := os.Stat(h.Path(bootFailedMark)); err == nil {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for sshd on %s (pid file %s): %w", h.Addr, h.files.sshdPid, ctx.Err())
		case <-h.done:
			return fmt.Errorf("sshd exited (%v): %s", h.exit, h.files.logTail())
		case <-tick.C:
		}
	}
}

// Stop kills the host: sshd and every process in its pid namespace, also
// those started by ssh sessions. Its directories stay. Stopping a stopped
// host does nothing.
func (h *Host) Stop() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.stopLocked()
}

func (h *Host) stopLocked() error {
	if h.proc == nil {
		return nil
	}
	// SIGKILL to the namespace's init makes the kernel kill all the rest.
	if err := h.proc.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("stop host %s: %w", h.Name, err)
	}
	<-h.done
	h.proc, h.done = nil, nil
	return nil
}

// pid is the host's init as seen from this machine, 0 when stopped.
func (h *Host) pid() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.proc == nil {
		return 0
	}
	return h.proc.Process.Pid
}

// Exec runs a command inside the host's namespaces without ssh and returns
// its combined output. The environment is that of a root ssh session, not the
// caller's.
func (h *Host) Exec(ctx context.Context, args ...string) ([]byte, error) {
	if len(args) == 0 {
		return nil, fmt.Errorf("exec on host %s: no command", h.Name)
	}
	pid := h.pid()
	if pid == 0 {
		return nil, fmt.Errorf("exec %q on host %s: host is stopped", args, h.Name)
	}
	nsArgs := append([]string{"-t", strconv.Itoa(pid), "-m", "-p", "-n", "-u", "--"}, args...)
	cmd := exec.CommandContext(ctx, "nsenter", nsArgs...)
	cmd.Dir = "/"
	cmd.Env = h.env()
	cmd.Cancel = func() error {
		// nsenter forks the command into the host's pid namespace; killing
		// nsenter alone would leave the command running there.
		p := cmd.Process.Pid
		if kids, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", p, p)); err == nil {
			for _, f := range strings.Fields(string(kids)) {
				if kid, err := strconv.Atoi(f); err == nil {
					syscall.Kill(kid, syscall.SIGKILL)
				}
			}
		}
		return cmd.Process.Kill()
	}
	// A background process that keeps the output open would otherwise hold
	// Exec until it ends.
	cmd.WaitDelay = 10 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("exec %q on host %s: %w: %s", args, h.Name, err, bytes.TrimSpace(out))
	}
	return out, nil
}

// ReplaceHostKey gives the host a new host key and restarts it, for tests of
// a changed host key. The lab's and the hosts' known_hosts files are
// rewritten with the new key; what callers copied earlier is not.
func (h *Host) ReplaceHostKey(ctx context.Context) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	key, err := writeKeyPair(h.files.hostKey, "root@"+h.Name)
	if err != nil {
		return fmt.Errorf("replace host key of %s: %w", h.Name, err)
	}
	h.lab.mu.Lock()
	h.HostKey = key
	err = h.lab.writeKnownHostsLocked()
	h.lab.mu.Unlock()
	if err != nil {
		return fmt.Errorf("replace host key of %s: %w", h.Name, err)
	}
	return h.restartLocked(ctx)
}

// restartLocked restarts a running host (for a new host key or sshd
// configuration); a stopped one starts with it when started.
func (h *Host) restartLocked(ctx context.Context) error {
	if h.proc == nil {
		return nil
	}
	if err := h.stopLocked(); err != nil {
		return err
	}
	return h.startLocked(ctx)
}

// ConfigureSSHD gives the host's sshd extra configuration lines (read
// before the lab's own, so they win) and restarts the host with them: a
// HostCertificate, TrustedUserCAKeys, AuthorizedKeysFile none for a host
// that only takes user certificates.
func (h *Host) ConfigureSSHD(ctx context.Context, lines string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if lines != "" && !strings.HasSuffix(lines, "\n") {
		lines += "\n"
	}
	h.sshd = lines
	if err := writeFileAtomic(h.files.sshdConfig, []byte(h.sshdConfig()), 0o644); err != nil {
		return fmt.Errorf("sshd config of %s: %w", h.Name, err)
	}
	return h.restartLocked(ctx)
}

// WriteNixConf appends lines to the host's /etc/nix/nix.conf. Nix reads it
// afresh in every process, so it applies to the next command on the host.
func (h *Host) WriteNixConf(extra string) error {
	if extra != "" && !strings.HasSuffix(extra, "\n") {
		extra += "\n"
	}
	f, err := os.OpenFile(h.Path("/etc/nix/nix.conf"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return fmt.Errorf("nix.conf of host %s: %w", h.Name, err)
	}
	_, err = f.WriteString(extra)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("nix.conf of host %s: %w", h.Name, err)
	}
	return nil
}

// spawner starts host processes from OS threads that never exit:
// Pdeathsig fires when the thread that forked the child ends, not the
// process, and the runtime ends the thread of any goroutine that returns
// while locked to it (golang.org/issue/27505). There are several: Start
// waits until the child has exec'd, which on a loaded machine takes tens of
// milliseconds, and one thread made a 100-host lab start in ~8 s of
// waiting alone.
var spawner struct {
	once sync.Once
	reqs chan spawnReq
}

// spawnThreads bounds how many hosts fork at once; more buys nothing on a
// few cores.
const spawnThreads = 16

type spawnReq struct {
	cmd  *exec.Cmd
	done chan error
}

func startPinned(cmd *exec.Cmd) error {
	spawner.once.Do(func() {
		spawner.reqs = make(chan spawnReq)
		for range spawnThreads {
			go func() {
				runtime.LockOSThread()
				for r := range spawner.reqs {
					r.done <- r.cmd.Start()
				}
			}()
		}
	})
	done := make(chan error, 1)
	spawner.reqs <- spawnReq{cmd, done}
	return <-done
}
