package cli

import (
	"context"
	"fmt"
	"path/filepath"

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
		// Only ask the hive where the key belongs when it is readable:
		// keygen must work before the hive is complete.
		h, _ := openHive(ctx, g, src, nix)
		out = eval.NewKeyFile(src, h)
	}
	key, err := eval.GenerateKey(ctx, nix, out, c.keyName(out))
	if err != nil {
		return fmt.Errorf("keygen: %w", err)
	}
	fmt.Fprintf(g.stderr, "secret key: %s (keep it out of git and out of the Nix store)\npublic key: %s\n", out, eval.PublicKeyPath(out))
	fmt.Fprintln(g.stdout, key)
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
