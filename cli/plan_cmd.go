package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"

	"github.com/nix-hive/nix-hive/deploy"
	"github.com/nix-hive/nix-hive/eval"
	"github.com/nix-hive/nix-hive/starlark"
	"github.com/nix-hive/nix-hive/state"
)

// PlanCmd is `nix-hive plan`.
type PlanCmd struct {
	Targets []string `arg:"" optional:"" help:"Instance name globs, or @tag globs (default: all)."`
}

func (c *PlanCmd) Help() string {
	return `Shows what deploy would do, touching no host and building nothing: each
system's output path, the closures that leave this machine and where they
go, where every other host substitutes from, and the activation waves.`
}

func (c *PlanCmd) Run(ctx context.Context, g *Globals, h *eval.Hive, st *state.File, pol *starlark.Policy) error {
	mode := g.paths(eval.Evaluate)
	prep, err := deploy.Prepare(ctx, deploy.Request{Hive: h, State: st, Policy: pol, Patterns: c.Targets, Paths: mode})
	if err != nil {
		return err
	}
	if g.JSON {
		enc := json.NewEncoder(g.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(prep.Plan)
	}
	writePlan(g.stdout, prep)
	return nil
}

func writePlan(w io.Writer, prep *deploy.Prepared) {
	plan := prep.Plan
	fmt.Fprintln(w, "systems:")
	for _, s := range slices.Sorted(maps.Keys(plan.Systems)) {
		fmt.Fprintf(w, "  %s: %s\n", s, plan.Systems[s])
	}
	fmt.Fprintln(w, "transfers from this host:")
	for _, t := range plan.Transfers {
		fmt.Fprintf(w, "  -> %s: %d closure(s)\n", t.To, len(t.Paths))
	}
	fmt.Fprintln(w, "hosts:")
	for _, n := range plan.Order {
		h := plan.Hosts[n]
		role := "activate " + h.System
		if !h.Target {
			role = "store only"
		}
		fmt.Fprintf(w, "  %s: %s, closures %s\n", n, role, h.Source)
	}
	if prep.Policy != nil {
		fmt.Fprintf(w, "waves (from %s):\n", prep.Policy.File)
	} else {
		fmt.Fprintln(w, "waves:")
	}
	for i, wv := range plan.Waves {
		fmt.Fprintf(w, "  %d: %s\n", i+1, strings.Join(wv, " "))
	}
	for _, m := range plan.Moved {
		fmt.Fprintf(w, "note: %s\n", m)
	}
}
