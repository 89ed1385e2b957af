package cli

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/term"

	"github.com/nix-hive/nix-hive/eval"
	"github.com/nix-hive/nix-hive/fanout"
	"github.com/nix-hive/nix-hive/internal/cmdline"
	"github.com/nix-hive/nix-hive/internal/quantity"
	"github.com/nix-hive/nix-hive/openssh"
	"github.com/nix-hive/nix-hive/scp"
	"github.com/nix-hive/nix-hive/shell"
	"github.com/nix-hive/nix-hive/state"
	"github.com/nix-hive/nix-hive/transport"
)

// SSHCmd is `nix-hive ssh`.
type SSHCmd struct {
	Fleet
	Instance string   `arg:"" help:"Instance name."`
	Command  []string `arg:"" optional:"" passthrough:"" help:"A command line for the remote shell, or a command and its arguments; an interactive login shell when empty."`
}

// sshFailure is OpenSSH's exit status for its own failures (no connection,
// connection lost), so scripts can tell them from the remote command's.
const sshFailure = cmdline.SSHFailure

func (c *SSHCmd) Help() string {
	return `Opens an interactive shell (with a pty when run from a terminal) on an
instance, through its jump hosts, with its host key checked, or runs a
command there. The remote exit status becomes nix-hive's; 255 means the
connection could not be made or was lost, as with OpenSSH.

One argument is a command line for the remote shell, as with ssh:
  nix-hive ssh www-1 'systemctl is-active nginx; exit 4'
Several arguments are a command and its arguments, each reaching the
remote command exactly as given (quoted one by one, unlike ssh, which
joins them with spaces):
  nix-hive ssh www-1 ls -l "/var/lib/my dir"`
}

func (c *SSHCmd) Run(ctx context.Context, g *Globals, h *eval.Hive, pool *transport.Pool) error {
	if _, ok := h.Inventory.Instances[c.Instance]; !ok {
		return fmt.Errorf("ssh: %w", h.Inventory.NoSuchInstance(c.Instance))
	}
	args := remoteCommand(c.Command)
	t := transport.Terminal{In: os.Stdin}
	if len(args) > 0 {
		t.Command = args[0]
		if len(args) > 1 {
			t.Command = shell.QuoteArgs(args)
		}
		if !term.IsTerminal(int(os.Stdin.Fd())) {
			t.In = nil
		}
	}
	code, err := pool.Shell(ctx, c.Instance, os.Stdin, g.stdout, g.stderr, t)
	if err != nil {
		if ctx.Err() != nil {
			return err // interrupted here: 130, as for any command
		}
		return cmdline.ExitError{Code: sshFailure, Err: err}
	}
	if code != 0 {
		return cmdline.ExitError{Code: code}
	}
	return nil
}

// SCPCmd is `nix-hive scp`.
type SCPCmd struct {
	Fleet
	Recursive bool   `short:"r" help:"Copy directories recursively."`
	Quiet     bool   `short:"q" help:"No progress display."`
	Src       string `arg:"" help:"Source: a local path or instance:path."`
	Dst       string `arg:"" help:"Destination: a local path or instance:path."`
}

func (c *SCPCmd) Help() string {
	return `Copies files between this machine and an instance over sftp on the pooled
SSH connection: instance:path on either side, directories with -r, modes
preserved, each file written under a temporary name and renamed into place.`
}

func (c *SCPCmd) Run(ctx context.Context, g *Globals, h *eval.Hive, pool *transport.Pool) error {
	// What the command line says is checked before anything connects: a
	// usage error, or an instance the hive lacks, is 2 as everywhere.
	si, _ := scp.SplitTarget(c.Src)
	di, _ := scp.SplitTarget(c.Dst)
	switch {
	case si == "" && di == "":
		return cmdline.UsageError{Err: fmt.Errorf("scp %s %s: neither side is an instance (write instance:path)", c.Src, c.Dst)}
	case si != "" && di != "":
		return cmdline.UsageError{Err: fmt.Errorf("scp %s %s: copying between two instances is not supported; copy through a local directory", c.Src, c.Dst)}
	}
	if in := si + di; h.Inventory.Instances[in] == nil {
		return fmt.Errorf("scp: %w", h.Inventory.NoSuchInstance(in))
	}
	var progress func(done, total int64)
	if !c.Quiet {
		if f, ok := g.stderrRaw.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
			var last time.Time
			progress = func(done, total int64) {
				if time.Since(last) < 100*time.Millisecond && done < total {
					return
				}
				last = time.Now()
				pct := 100.0
				if total > 0 {
					pct = float64(done) * 100 / float64(total)
				}
				fmt.Fprintf(g.stderr, "\r%s -> %s: %5.1f%% of %s", c.Src, c.Dst, pct, quantity.Bytes(uint64(total)))
				if done >= total {
					fmt.Fprintln(g.stderr)
				}
			}
		}
	}
	return scp.Copy(ctx, pool, c.Src, c.Dst, c.Recursive, progress)
}

// SSHConfigCmd is `nix-hive ssh-config`.
type SSHConfigCmd struct {
	AcceptNewHostKeys bool `help:"Write StrictHostKeyChecking accept-new instead of yes (new keys go to the hive's .nix-hive/known_hosts)."`
	Write             bool `help:"Only write the files and print the config's path, for ssh -F \"$(nix-hive ssh-config --write)\"."`
}

func (c *SSHConfigCmd) Help() string {
	return `Prints an OpenSSH client config with a Host block per instance (HostName,
User, Port, ProxyJump, HostKeyAlias) that checks host keys against the
hive's pinned keys (written to .nix-hive/ssh_known_hosts beside the state
file), else the keys accepted for the hive (.nix-hive/known_hosts) and the
user's known_hosts, and that ends by including ~/.ssh/config. The config
is also written to .nix-hive/ssh_config, which --write prints instead:
  ssh -F "$(nix-hive ssh-config --write)" www-1
(ssh -F <(...) cannot work: ssh closes the descriptor before reading it.)`
}

func (c *SSHConfigCmd) Run(ctx context.Context, g *Globals, h *eval.Hive, st *state.File) error {
	f := Fleet{AcceptNewHostKeys: c.AcceptNewHostKeys, ConnectTimeout: transport.DefaultConnectTimeout}
	p, err := newPool(g, h, f.transportConfig(h, st))
	if err != nil {
		return err
	}
	defer p.Close()
	// Of an instance's several addresses, OpenSSH takes one: the first
	// that answers now.
	var several []string
	for _, n := range h.Inventory.InstanceNames() {
		if len(h.Inventory.Instances[n].Hosts) > 1 {
			several = append(several, n)
		}
	}
	fanout.Each(ctx, len(several), fanout.DefaultLimit, func(ctx context.Context, i int) {
		p.Client(ctx, several[i])
	})
	cfg := st.AuxPath("ssh_config")
	if err := os.MkdirAll(filepath.Dir(cfg), 0o755); err != nil {
		return fmt.Errorf("ssh-config: %w", err)
	}
	kh := st.AuxPath("ssh_known_hosts")
	if err := openssh.Write(p.Hosts(), cfg, kh); err != nil {
		return fmt.Errorf("ssh-config: %w", err)
	}
	if c.Write {
		abs, err := filepath.Abs(cfg)
		if err != nil {
			return fmt.Errorf("ssh-config: %w", err)
		}
		_, err = fmt.Fprintln(g.stdout, abs)
		return err
	}
	return openssh.WriteConfig(g.stdout, p.Hosts(), kh)
}
