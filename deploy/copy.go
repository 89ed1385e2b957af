package deploy

import (
	"context"
	"fmt"
	"net/url"
	"strings"

	"github.com/nix-hive/nix-hive/nixcmd"
	"github.com/nix-hive/nix-hive/transport"
)

// NixCopier pushes closures with `nix copy`, reaching instances through
// the generated OpenSSH config so jump hosts and pinned keys apply exactly
// as they do for nix-hive's own connections.
type NixCopier struct {
	Nix       *nixcmd.Runner
	SSHConfig string // generated config file, given to ssh as -F
	// Privileged lists instances whose login is not root: their store is
	// written through Sudo (nix-store --serve --write needs root when no
	// daemon accepts the import for the user).
	Privileged map[string]bool
	Sudo       string
}

// URL is the store URL nix copy uses for dest.
func (c *NixCopier) URL(dest string) string {
	if strings.Contains(dest, "://") {
		return dest
	}
	// The instance name is the Host alias in the generated config, which
	// supplies address, user, port and jump chain.
	u := "ssh://" + transport.Alias(dest)
	if c.Privileged[dest] && c.Sudo != "" {
		u += "?remote-program=" + url.PathEscape(c.Sudo+" nix-store")
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
	args := append([]string{"copy", "--to", c.URL(dest)}, paths...)
	if _, err := r.Run(ctx, "nix", args...); err != nil {
		return fmt.Errorf("nix copy to %s: %w", dest, err)
	}
	return nil
}
