package cli

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/nix-hive/nix-hive/eval"
	"github.com/nix-hive/nix-hive/nixcmd"
)

// KeygenCmd is `nix-hive keygen`.
type KeygenCmd struct {
	Name string `help:"Key name, shown in signatures (default: <hive directory>-1)."`
	Out  string `help:"Secret key file (default: the hive's signing.keyFile, else keys/hive.sec beside the hive). The public key goes beside it with .pub." type:"path"`
}

func (c *KeygenCmd) Help() string {
	return `Creates a Nix binary-cache signing key pair for the hive. Built closures are
signed with the secret key; consumers trust the public key (see the NixOS
module in lib/hive.nix). Existing keys are never overwritten. Keep the secret
key out of version control and out of the Nix store.`
}

func (c *KeygenCmd) Run(ctx context.Context, g *Globals, src eval.Source, nix *nixcmd.Runner) error {
	out := c.Out
	if out == "" {
		out = filepath.Join(src.Dir, "keys", "hive.sec")
		// Only ask the hive where the key belongs when it is readable:
		// keygen must work before the hive is complete.
		if h, err := eval.Open(ctx, src, nix); err == nil && h.Inventory.Signing.KeyFile != "" {
			out = h.Inventory.Signing.KeyFile
			if !filepath.IsAbs(out) {
				out = filepath.Join(src.Dir, out)
			}
		}
	}
	pub := eval.PublicKeyPath(out)
	for _, p := range []string{out, pub} {
		if _, err := os.Stat(p); err == nil {
			return fmt.Errorf("keygen: %s already exists; not overwriting a signing key", p)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("keygen: %w", err)
		}
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o700); err != nil {
		return fmt.Errorf("keygen: %w", err)
	}
	if _, err := nix.Run(ctx, "nix-store", "--generate-binary-cache-key", c.keyName(out), out, pub); err != nil {
		return fmt.Errorf("keygen: %w", err)
	}
	if err := os.Chmod(out, 0o600); err != nil {
		return fmt.Errorf("keygen: %w", err)
	}
	key, err := os.ReadFile(pub)
	if err != nil {
		return fmt.Errorf("keygen: %w", err)
	}
	fmt.Fprintf(g.stderr, "secret key: %s (keep it out of git and out of the Nix store)\npublic key: %s\n", out, pub)
	fmt.Fprintln(g.stdout, strings.TrimSpace(string(key)))
	return nil
}

// keyName is --name, else the hive directory's name with -1.
func (c *KeygenCmd) keyName(secret string) string {
	if c.Name != "" {
		return c.Name
	}
	dir := filepath.Base(filepath.Dir(filepath.Dir(secret)))
	if filepath.Base(filepath.Dir(secret)) != "keys" {
		dir = filepath.Base(filepath.Dir(secret))
	}
	return dir + "-1"
}
