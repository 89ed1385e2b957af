package eval

import (
	"context"
	"fmt"
	"strings"
)

// Expr evaluates expr, a Nix function of { hive, lib }, against the
// normalized hive (the inventory every command reads) and returns its
// value as JSON. lib is nixpkgs' lib when the hive names nixpkgs, else
// builtins. A failing expression is an error in the hive's terms (ErrHive):
// the user wrote it, as they wrote the hive.
func (e *Evaluator) Expr(ctx context.Context, expr string) ([]byte, error) {
	inst, err := e.installable("evalArgs")
	if err != nil {
		return nil, err
	}
	// The expression is Nix the user wrote; it goes to nix as one argument,
	// never through a shell. The newline ends a trailing comment in it.
	args := append([]string{"eval", "--json"}, inst...)
	args = append(args, "--apply", "args: (\n"+expr+"\n) args")
	out, err := e.Nix.Quiet().Run(ctx, "nix", args...)
	if err != nil {
		if ctx.Err() == nil {
			err = hiveError{err}
		}
		return nil, fmt.Errorf("evaluate -E against %s: %w", e.Src.File, err)
	}
	return out, nil
}

// ConfigAttr evaluates attribute path attr of system's configuration (a
// modules system's NixOS config; a toplevel system has only
// system.build.toplevel) and returns it as JSON (a derivation as its
// output path).
func (e *Evaluator) ConfigAttr(ctx context.Context, system string, attr []string) ([]byte, error) {
	inst, err := e.installable(append([]string{"configs", system}, attr...)...)
	if err != nil {
		return nil, err
	}
	out, err := e.Nix.Quiet().Run(ctx, "nix", append([]string{"eval", "--json"}, inst...)...)
	if err != nil {
		if ctx.Err() == nil {
			err = hiveError{err}
		}
		return nil, fmt.Errorf("evaluate %s of system %s in %s: %w", strings.Join(attr, "."), system, e.Src.File, err)
	}
	return out, nil
}
