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
	"github.com/nix-hive/nix-hive/mux"
	"github.com/nix-hive/nix-hive/nixcmd"
	"github.com/nix-hive/nix-hive/transport"
)

// NixCopier pushes closures with `nix copy`. Made by NewNixCopier, the
// ssh that nix copy runs is nix-hive's relay (mux.Relay): the push is a
// session on the connection the deploy already holds to the host, with
// its address, jump hosts and pinned key, and costs the host no login of
// its own. A NixCopier made without a pool runs OpenSSH, given SSHConfig
// (openssh.Write) when set.
type NixCopier struct {
	Nix       *nixcmd.Runner
	SSHConfig string // an OpenSSH config for ssh -F, without a relay
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
	// relay, when set, serves the pool to nix copy's ssh: a script named
	// ssh first on nix's PATH (bin) runs `nix-hive mux ssh`, so a push
	// rides the connection the deploy holds to the host instead of
	// logging in again (the region's third handshake per host).
	relay *mux.Relay
	bin   string
}

// NewNixCopier serves pool to nix copy's ssh from a private temporary
// directory; Close stops it and removes the directory.
func NewNixCopier(nix *nixcmd.Runner, pool *transport.Pool, inv *eval.Inventory, priv *host.Privilege) (*NixCopier, error) {
	dir, err := os.MkdirTemp("", "nix-hive-ssh-")
	if err != nil {
		return nil, fmt.Errorf("ssh relay for nix copy: %w", err)
	}
	c := &NixCopier{Nix: nix, Privilege: priv, logins: map[string]string{}, pool: pool, dir: dir}
	for n, in := range inv.Instances {
		c.logins[n] = in.User
	}
	if err := c.startRelay(); err != nil {
		c.Close()
		return nil, fmt.Errorf("ssh relay for nix copy: %w", err)
	}
	return c, nil
}

// startRelay serves the pool on a socket beside the config and puts
// the ssh that uses it in bin. This program is linked there as nix-hive,
// so the script runs it under that name whatever its file is called.
func (c *NixCopier) startRelay() error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	bin := filepath.Join(c.dir, "bin")
	if err := os.Mkdir(bin, 0o700); err != nil {
		return err
	}
	if err := os.Symlink(exe, filepath.Join(bin, "nix-hive")); err != nil {
		return err
	}
	r, err := mux.NewRelay(c.pool, filepath.Join(c.dir, "relay.sock"))
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(bin, "ssh"), []byte(mux.SSHScript(filepath.Join(bin, "nix-hive"), r.Socket())), 0o700); err != nil {
		r.Close()
		return err
	}
	c.relay, c.bin = r, bin
	return nil
}

// Close stops the relay and removes the files NewNixCopier wrote.
func (c *NixCopier) Close() error {
	if c.relay != nil {
		c.relay.Close()
	}
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

// runner is nix with the ssh that reaches instances (the relay, or
// OpenSSH with SSHConfig).
func (c *NixCopier) runner() *nixcmd.Runner {
	r := *c.Nix
	r.Stderr = nil // per-path chatter of a fleet-wide copy helps nobody; errors keep the tail
	if c.SSHConfig != "" {
		r.Env = append(append([]string(nil), r.Env...), "NIX_SSHOPTS=-F "+c.SSHConfig)
	}
	if c.bin != "" {
		r.Env = append(r.Env, "PATH="+c.bin+string(os.PathListSeparator)+os.Getenv("PATH"))
	}
	return &r
}

// Fetch implements Fetcher: nix copy --from the instance, every path
// signed by key.
func (c *NixCopier) Fetch(ctx context.Context, from, key string, paths []string) error {
	if c.pool != nil {
		if _, err := c.pool.Client(ctx, from); err != nil {
			return fmt.Errorf("nix copy from %s: %w", from, err)
		}
	}
	args := []string{"copy", "--from", c.URL(from), "--option", "require-sigs", "true"}
	if key != "" {
		args = append(args, "--option", "extra-trusted-public-keys", key)
	}
	if _, err := c.runner().Run(ctx, "nix", append(args, paths...)...); err != nil {
		return fmt.Errorf("nix copy from %s: %w", from, err)
	}
	return nil
}

// Copy implements Copier.
func (c *NixCopier) Copy(ctx context.Context, dest string, paths []string) error {
	r := c.runner()
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
