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
	"github.com/nix-hive/nix-hive/host"
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
	// Privilege says how nix-store writes the store of an instance whose
	// login is not root (host.Privilege.CopyProgram).
	Privilege *host.Privilege
	logins    map[string]string // instance -> its login
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
func NewNixCopier(nix *nixcmd.Runner, pool *transport.Pool, inv *eval.Inventory, priv *host.Privilege) (*NixCopier, error) {
	dir, err := os.MkdirTemp("", "nix-hive-ssh-")
	if err != nil {
		return nil, fmt.Errorf("ssh config for nix copy: %w", err)
	}
	c := &NixCopier{Nix: nix, SSHConfig: filepath.Join(dir, "ssh_config"), Privilege: priv, logins: map[string]string{}, pool: pool, dir: dir}
	if err := openssh.Write(pool.Hosts(), c.SSHConfig, filepath.Join(dir, "known_hosts")); err != nil {
		c.Close()
		return nil, fmt.Errorf("ssh config for nix copy: %w", err)
	}
	for n, in := range inv.Instances {
		c.logins[n] = in.User
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
	if prog := c.Privilege.CopyProgram(dest, c.logins[dest]); prog != "" {
		u += "?remote-program=" + url.PathEscape(prog)
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
	if c.pool != nil && host.NeedsPrivilege(c.logins[dest]) {
		if err := c.Privilege.ProbeAgent(ctx, c.pool, dest); err != nil {
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
