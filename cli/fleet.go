package cli

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/alecthomas/kong"
	"golang.org/x/sys/unix"

	"github.com/nix-hive/nix-hive/deploy"
	"github.com/nix-hive/nix-hive/eval"
	"github.com/nix-hive/nix-hive/host"
	"github.com/nix-hive/nix-hive/internal/cmdline"
	"github.com/nix-hive/nix-hive/state"
	"github.com/nix-hive/nix-hive/transport"
)

// Fleet flags are shared by every command that connects to instances.
// ConnectTimeout's default is transport.DefaultConnectTimeout (a kong tag
// cannot name it; TestFleetConnectTimeoutDefault holds the two together).
type Fleet struct {
	AcceptNewHostKeys bool          `help:"Record and accept host keys of instances with neither a pinned hostKey nor a known_hosts entry, in the hive's .nix-hive/known_hosts (a changed key is still refused)."`
	ConnectTimeout    time.Duration `default:"10s" help:"Limit for connecting to one host (TCP and SSH handshake, per hop); a connection silent for 3 times as long is given up."`
	NoMux             bool          `name:"no-mux" help:"Connect to the hosts directly even while a connection holder (nix-hive mux) runs for the hive."`
	MuxPersist        time.Duration `name:"mux-persist" default:"10m" env:"NIX_HIVE_MUX_PERSIST" help:"When no connection holder runs for the hive, start one that keeps the connections this command makes open until this long passes without a command using them, as OpenSSH's ControlPersist does (0: start none)."`
}

// AfterApply makes the flags of the command that embeds Fleet available
// to the pool's provider.
func (f *Fleet) AfterApply(kctx *kong.Context) error {
	if f.MuxPersist < 0 {
		return cmdline.UsageError{Err: fmt.Errorf("--mux-persist %s: want 0 (start no holder) or more", f.MuxPersist)}
	}
	kctx.Bind(f)
	return nil
}

// transportConfig derives SSH endpoints from the inventory and the fleet
// flags. Host keys accepted with --accept-new-host-keys go to the hive's
// own known_hosts (beside its state), never the user's: they belong to
// the hive's instances, not to addresses other hives may reuse.
func (f *Fleet) transportConfig(h *eval.Hive, st *state.File) transport.Config {
	inv := h.Inventory
	eps := make(map[string]transport.Endpoint, len(inv.Instances))
	for name, in := range inv.Instances {
		opts := map[string]string{}
		for k, v := range in.SSH {
			opts[k] = fmt.Sprint(v)
		}
		var more []string
		if len(in.Hosts) > 1 {
			more = in.Hosts[1:]
		}
		eps[name] = transport.Endpoint{Name: name, Host: in.Host, Fallbacks: more, Port: in.Port, User: in.User,
			HostKeys: in.HostKeys, Jump: in.Jump, Options: opts}
	}
	// One bound for everything: connecting, and silence on an open
	// connection (a keepalive when a host was silent for ConnectTimeout,
	// dead when unanswered for 3 times as long),
	// for the Go client and the OpenSSH config handed to nix copy alike.
	return transport.Config{Endpoints: eps, HostCAs: inv.HostCAs, Hive: h.Src.Dir,
		AcceptNewHostKeys: f.AcceptNewHostKeys, AcceptedKnownHosts: st.AuxPath("known_hosts"),
		ConnectTimeout: f.ConnectTimeout, KeepAlive: f.ConnectTimeout, KeepAliveTimeout: 3 * f.ConnectTimeout,
		Passphrase: askPassphrase}
}

// askPassphrase asks on the controlling terminal, as ssh does, without
// echo; the transport asks once per key file and never two at a time.
// Without a terminal (cron, CI) the key is skipped, and the refused login
// says to load it into ssh-agent.
func askPassphrase(keyFile string) ([]byte, error) {
	tty, err := os.OpenFile("/dev/tty", os.O_RDWR, 0)
	if err != nil {
		return nil, errors.New("encrypted, no agent holds it, and there is no terminal to ask for its passphrase; load it into ssh-agent")
	}
	defer tty.Close()
	pass, err := promptOnTerminal(func() ([]byte, error) {
		return readSecret(tty, fmt.Sprintf("Enter passphrase for key '%s': ", keyFile))
	})
	if err != nil {
		return nil, fmt.Errorf("read passphrase: %w", err)
	}
	return pass, nil
}

// Escalation is how commands that need root on hosts get it for
// non-root logins.
type Escalation struct {
	Sudo            string `default:"sudo" help:"Privilege command for instances whose user is not root."`
	AskSudoPassword bool   `help:"Ask for the non-root logins' sudo password once, on the terminal, before touching any host. Without it nix-hive asks when a host's sudo turns out to want one."`
}

// privilege is the flags' privilege command, asking for a password on
// the terminal when one is wanted, warning through g.
func (e *Escalation) privilege(g *Globals) (*host.Privilege, error) {
	p := host.NewPrivilege(e.Sudo, askSudoPassword(), e.AskSudoPassword)
	p.Warn = func(msg string) { g.warnf("%s", msg) }
	return p, p.Prepare()
}

// askSudoPassword is the prompt for the sudo password on the controlling
// terminal, without echo; nil without a terminal (cron, CI), so that a
// host that wants a password fails with what to do.
func askSudoPassword() func() ([]byte, error) {
	tty, err := os.OpenFile("/dev/tty", os.O_RDWR, 0)
	if err != nil {
		return nil
	}
	tty.Close()
	return func() ([]byte, error) {
		tty, err := os.OpenFile("/dev/tty", os.O_RDWR, 0)
		if err != nil {
			return nil, fmt.Errorf("sudo password: %w", err)
		}
		defer tty.Close()
		pass, err := promptOnTerminal(func() ([]byte, error) {
			return readSecret(tty, "[nix-hive] sudo password for the hosts' logins: ")
		})
		if err != nil {
			return nil, fmt.Errorf("read sudo password: %w", err)
		}
		if len(pass) == 0 {
			return nil, fmt.Errorf("%w: none given", host.ErrSudoPassword)
		}
		return pass, nil
	}
}

// readSecret shows prompt on tty and reads a line with echo off. Echo goes
// off before the prompt shows, as ssh's readpassphrase does: what is
// typed as soon as the prompt appears is never echoed.
func readSecret(tty *os.File, prompt string) ([]byte, error) {
	fd := int(tty.Fd())
	old, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return nil, fmt.Errorf("terminal: %w", err)
	}
	quiet := *old
	quiet.Lflag &^= unix.ECHO
	quiet.Lflag |= unix.ICANON | unix.ISIG
	quiet.Iflag |= unix.ICRNL
	if err := unix.IoctlSetTermios(fd, unix.TCSETS, &quiet); err != nil {
		return nil, fmt.Errorf("terminal: %w", err)
	}
	defer unix.IoctlSetTermios(fd, unix.TCSETS, old)
	fmt.Fprint(tty, prompt)
	defer fmt.Fprintln(tty)
	var line []byte
	b := make([]byte, 1)
	for {
		// A byte at a time: nothing after the line is taken from the
		// terminal.
		n, err := tty.Read(b)
		if n == 1 && b[0] != '\n' {
			line = append(line, b[0])
			continue
		}
		if n == 1 || (err == io.EOF && len(line) > 0) {
			return bytes.TrimSuffix(line, []byte("\r")), nil
		}
		if err != nil {
			return nil, err
		}
	}
}

// remoteCommand is a passthrough argument list without the "--" that
// ends nix-hive's own flags (kong keeps it), so that `run T -- ls` and
// `ssh i -- ls` run ls, as `run T ls` and `ssh i ls` do.
func remoteCommand(args []string) []string {
	if len(args) > 0 && args[0] == "--" {
		return args[1:]
	}
	return args
}

// hostFiles is how a command reads hosts' state files over sftp, or nil
// when a query session per host is cheaper. Reading is cheaper when the
// sftp sessions outlive one question: a holder's, which outlive the
// command, or the command's own when it asks again (status --watch).
func hostFiles(pool *transport.Pool, rounds bool) func(context.Context, string) (host.Files, error) {
	if rounds || pool.ThroughMux() {
		return deploy.PoolFiles(pool)
	}
	return nil
}
