package cli

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/term"

	"github.com/nix-hive/nix-hive/eval"
	"github.com/nix-hive/nix-hive/internal/cmdline"
	"github.com/nix-hive/nix-hive/shell"
	"github.com/nix-hive/nix-hive/state"
	"github.com/nix-hive/nix-hive/transport"
)

// SSHCmd is `nix-hive ssh`.
type SSHCmd struct {
	Fleet
	Instance string   `arg:"" help:"Instance name."`
	Command  []string `arg:"" optional:"" passthrough:"" help:"Command and arguments; an interactive login shell when empty."`
}

func (c *SSHCmd) Help() string {
	return `Opens an interactive shell (with a pty when run from a terminal) on an
instance, through its jump hosts, with its host key checked, or runs a
command there. The remote exit status becomes nix-hive's. Arguments reach
the remote command exactly as given; use sh -c '...' for shell syntax.`
}

func (c *SSHCmd) Run(ctx context.Context, g *Globals, h *eval.Hive, pool *transport.Pool) error {
	if _, ok := h.Inventory.Instances[c.Instance]; !ok {
		return fmt.Errorf("ssh: no instance %q in %s", c.Instance, h.Src.File)
	}
	args := c.Command
	if len(args) > 0 && args[0] == "--" {
		args = args[1:]
	}
	t := transport.Terminal{In: os.Stdin}
	if len(args) > 0 {
		t.Command = shell.QuoteArgs(args)
		if !term.IsTerminal(int(os.Stdin.Fd())) {
			t.In = nil
		}
	}
	code, err := pool.Shell(ctx, c.Instance, os.Stdin, g.stdout, g.stderr, t)
	if err != nil {
		return err
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

func (c *SCPCmd) Run(ctx context.Context, g *Globals, pool *transport.Pool) error {
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
				fmt.Fprintf(g.stderr, "\r%s -> %s: %5.1f%% of %s", c.Src, c.Dst, pct, humanBytes(total))
				if done >= total {
					fmt.Fprintln(g.stderr)
				}
			}
		}
	}
	return pool.Copy(ctx, c.Src, c.Dst, c.Recursive, progress)
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// SSHConfigCmd is `nix-hive ssh-config`.
type SSHConfigCmd struct {
	AcceptNewHostKeys bool `help:"Write StrictHostKeyChecking accept-new instead of yes."`
}

func (c *SSHConfigCmd) Help() string {
	return `Prints an OpenSSH client config with a Host block per instance (HostName,
User, Port, ProxyJump, HostKeyAlias) that checks host keys against the
hive's pinned keys (written to .nix-hive/known_hosts beside the state file)
and then the user's known_hosts, and that ends by including ~/.ssh/config.
Use it as: ssh -F <(nix-hive ssh-config) www-1`
}

func (c *SSHConfigCmd) Run(ctx context.Context, g *Globals, h *eval.Hive, st *state.File) error {
	f := Fleet{AcceptNewHostKeys: c.AcceptNewHostKeys, ConnectTimeout: 10 * time.Second}
	p, err := transport.NewPool(f.transportConfig(h.Inventory))
	if err != nil {
		return fmt.Errorf("%s: %w", h.Src.File, err)
	}
	defer p.Close()
	for _, w := range p.Warnings() {
		fmt.Fprintf(g.stderr, "nix-hive: warning: %s\n", w)
	}
	kh := st.AuxPath("known_hosts")
	if err := os.MkdirAll(filepath.Dir(kh), 0o755); err != nil {
		return fmt.Errorf("ssh-config: %w", err)
	}
	if err := p.WriteOpenSSH(filepath.Join(filepath.Dir(kh), "ssh_config"), kh); err != nil {
		return fmt.Errorf("ssh-config: %w", err)
	}
	return p.WriteSSHConfig(g.stdout, kh)
}
