package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/nix-hive/nix-hive/eval"
	"github.com/nix-hive/nix-hive/internal/cmdline"
)

// EvalCmd is `nix-hive eval`.
type EvalCmd struct {
	Expr     string `short:"E" name:"expr" placeholder:"EXPR" help:"A Nix function of { hive, lib }, applied to the normalized hive."`
	Instance string `placeholder:"NAME" help:"Read --attr from this instance's system configuration."`
	Attr     string `placeholder:"PATH" help:"Attribute path in the instance's system configuration, e.g. services.openssh.enable."`
}

func (c *EvalCmd) Help() string {
	return `Prints JSON, for scripts and for debugging a hive.

  nix-hive eval -E '{ hive, ... }: builtins.mapAttrs (n: i: i.host) hive.instances'
  nix-hive eval --instance www-1 --attr networking.hostName

-E evaluates a function of { hive, lib } against the hive as nix-hive reads
it (defaults merged into instances, every attribute present); lib is
nixpkgs' lib when the hive names nixpkgs, else builtins. --instance and
--attr read an attribute of the NixOS configuration of the instance's
system (a toplevel system has only system.build.toplevel). Nothing is
built and no host is contacted.`
}

func (c *EvalCmd) Validate() error {
	switch {
	case c.Expr != "" && (c.Instance != "" || c.Attr != ""):
		return cmdline.UsageError{Err: fmt.Errorf("give -E EXPR, or --instance NAME --attr PATH, not both")}
	case c.Expr == "" && (c.Instance == "" || c.Attr == ""):
		return cmdline.UsageError{Err: fmt.Errorf("give -E EXPR, or --instance NAME --attr PATH")}
	}
	return nil
}

func (c *EvalCmd) Run(ctx context.Context, g *Globals, h *eval.Hive) error {
	var out []byte
	var err error
	if c.Expr != "" {
		out, err = h.Evaluator.Expr(ctx, c.Expr)
	} else {
		in, ok := h.Inventory.Instances[c.Instance]
		if !ok {
			return fmt.Errorf("eval --instance: %w", h.Inventory.NoSuchInstance(c.Instance))
		}
		if in.System == "" {
			return eval.InHive(fmt.Errorf("eval --instance %s: the instance has no system", c.Instance))
		}
		if s := h.Inventory.Systems[in.System]; s != nil && s.Kind == "toplevel" && c.Attr != "system.build.toplevel" {
			return eval.InHive(fmt.Errorf("eval --instance %s --attr %s: system %s is given as a toplevel, not as NixOS modules: it has no configuration, only system.build.toplevel", c.Instance, c.Attr, in.System))
		}
		out, err = h.Evaluator.ConfigAttr(ctx, in.System, strings.Split(c.Attr, "."))
	}
	if err != nil {
		return err
	}
	var b bytes.Buffer
	if json.Indent(&b, bytes.TrimSpace(out), "", "  ") != nil {
		b.Reset()
		b.Write(bytes.TrimSpace(out))
	}
	b.WriteByte('\n')
	_, err = g.stdout.Write(b.Bytes())
	return err
}
