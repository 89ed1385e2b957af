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

func (c *KeygenCmd) Run(ctx context.Context, g *Globals) error {
	out := c.Out
	if out == "" {
		src, err := g.source()
		if err != nil {
			return err
		}
		out = filepath.Join(src.Dir, "keys", "hive.sec")
		// Only ask the hive where the key belongs when it is readable:
		// keygen must work before the hive is complete.
		if inv, err := g.inventory(ctx); err == nil && inv.Signing.KeyFile != "" {
			out = inv.Signing.KeyFile
			if !filepath.IsAbs(out) {
				out = filepath.Join(src.Dir, out)
			}
		}
	}
	pub := publicKeyPath(out)
	for _, p := range []string{out, pub} {
		if _, err := os.Stat(p); err == nil {
			return fmt.Errorf("keygen: %s already exists; not overwriting a signing key", p)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("keygen: %w", err)
		}
	}
	name := c.Name
	if name == "" {
		dir := filepath.Base(filepath.Dir(filepath.Dir(out)))
		if filepath.Base(filepath.Dir(out)) != "keys" {
			dir = filepath.Base(filepath.Dir(out))
		}
		name = dir + "-1"
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o700); err != nil {
		return fmt.Errorf("keygen: %w", err)
	}
	ev, err := g.evaluatorNoHive()
	if err != nil {
		return err
	}
	if _, err := ev.Nix.Run(ctx, "nix-store", "--generate-binary-cache-key", name, out, pub); err != nil {
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

// publicKeyPath is where the public half of a secret key file lives.
func publicKeyPath(secret string) string {
	return strings.TrimSuffix(secret, ".sec") + ".pub"
}

// publicKey returns the hive's public signing key: signing.publicKey, else
// the .pub file beside signing.keyFile; "" when the hive does not sign.
func (g *Globals) publicKey(inv *eval.Inventory) (string, error) {
	if inv.Signing.PublicKey != "" {
		return inv.Signing.PublicKey, nil
	}
	kf, err := g.keyFile(inv)
	if err != nil || kf == "" {
		return "", err
	}
	b, err := os.ReadFile(publicKeyPath(kf))
	if err != nil {
		return "", fmt.Errorf("public signing key: %w (set signing.publicKey in the hive)", err)
	}
	return strings.TrimSpace(string(b)), nil
}
