package deploy

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/nix-hive/nix-hive/eval"
	"github.com/nix-hive/nix-hive/nixcmd"
	"github.com/nix-hive/nix-hive/openssh"
	"github.com/nix-hive/nix-hive/transport"
)

// NixCopier pushes closures with `nix copy`, reaching instances through
// the pool's OpenSSH configuration (written to a private temporary
// directory), so addresses, jump hosts and pinned keys apply exactly as
// they do for nix-hive's own connections.
type NixCopier struct {
	Nix       *nixcmd.Runner
	SSHConfig string // generated config file, given to ssh as -F
	// Privileged lists instances whose login is not root: their store is
	// written through the privilege command (nix-store --serve --write
	// needs root when no daemon accepts the import for the user), unless
	// sudo there wants a password, which nix copy has no way to give, or
	// the host has the nix-hive agent, whose sudo rules allow nothing
	// else: then nix-store runs as the login, and the host's nix-daemon
	// (NixOS runs one) imports the signed closure.
	Privileged map[string]bool
	Privilege  *Privilege
	// pool, when set, connects to an instance before nix copy does, so
	// a refused host key is reported as nix-hive reports it (fingerprint
	// and the hostKey line to pin) rather than as ssh's "cannot connect",
	// and a key accepted with --accept-new-host-keys is recorded before
	// ssh looks for it.
	pool *transport.Pool
	dir  string
}

// NewNixCopier writes pool's OpenSSH files for nix copy; Close removes
// them.
func NewNixCopier(nix *nixcmd.Runner, pool *transport.Pool, inv *eval.Inventory, priv *Privilege) (*NixCopier, error) {
	dir, err := os.MkdirTemp("", "nix-hive-ssh-")
	if err != nil {
		return nil, fmt.Errorf("ssh config for nix copy: %w", err)
	}
	c := &NixCopier{Nix: nix, SSHConfig: filepath.Join(dir, "ssh_config"), Privilege: priv, Privileged: map[string]bool{}, pool: pool, dir: dir}
	if err := openssh.Write(pool.Hosts(), c.SSHConfig, filepath.Join(dir, "known_hosts")); err != nil {
		c.Close()
		return nil, fmt.Errorf("ssh config for nix copy: %w", err)
	}
	for n, in := range inv.Instances {
		c.Privileged[n] = needsPrivilege(in.User)
	}
	return c, nil
}

// Close removes the files NewNixCopier wrote.
func (c *NixCopier) Close() error {
	if c.dir == "" {
		return nil
	}
	return os.RemoveAll(c.dir)
}

// URL is the store URL nix copy uses for dest.
func (c *NixCopier) URL(dest string) string {
	if strings.Contains(dest, "://") {
		return dest
	}
	// The instance name is the Host alias in the generated config, which
	// supplies address, user, port and jump chain.
	u := "ssh://" + transport.Alias(dest)
	if esc := c.Privilege.For(dest); c.Privileged[dest] && esc.prefix != "" && !esc.agent && !c.Privilege.usesPassword(dest) {
		u += "?remote-program=" + url.PathEscape(esc.prefix+" nix-store")
	}
	return u
}

// Copy implements Copier.
func (c *NixCopier) Copy(ctx context.Context, dest string, paths []string) error {
	r := *c.Nix
	r.Stderr = nil // per-path chatter of a fleet-wide copy helps nobody; errors keep the tail
	if c.SSHConfig != "" {
		r.Env = append(append([]string(nil), r.Env...), "NIX_SSHOPTS=-F "+c.SSHConfig)
	}
	if c.pool != nil && !strings.Contains(dest, "://") {
		if _, err := c.pool.Client(ctx, dest); err != nil {
			return fmt.Errorf("nix copy to %s: %w", dest, err)
		}
	}
	if c.pool != nil && c.Privileged[dest] {
		if err := c.Privilege.probeAgent(ctx, c.pool, dest); err != nil {
			return fmt.Errorf("nix copy to %s: %w", dest, err)
		}
	}
	args := append([]string{"copy", "--to", c.URL(dest)}, paths...)
	for attempt := 0; ; attempt++ {
		_, err := r.Run(ctx, "nix", args...)
		if err == nil {
			return nil
		}
		// Releases word a failed connection differently; say it one way,
		// with what ssh said, instead of Nix's command line.
		var ne *nixcmd.Error
		if ctx.Err() != nil || !errors.As(err, &ne) {
			return fmt.Errorf("nix copy to %s: %w", dest, err)
		}
		detail, ok := nixcmd.SSHConnectFailure(ne.Stderr)
		if !ok {
			return fmt.Errorf("nix copy to %s: %w", dest, err)
		}
		// ssh never got in, so nothing was copied: trying once more is
		// safe. It is worth it where the deploy host or a jump host is
		// loaded (1 to 2 consumers of 103 on a lab's first deploy, their
		// ProxyJump timed out) or sshd's MaxStartups turned one away.
		if attempt == 0 {
			continue
		}
		if detail == "" {
			detail = "ssh gave no reason"
		}
		return fmt.Errorf("nix copy to %s: cannot connect over SSH (tried twice): %s", dest, detail)
	}
}
