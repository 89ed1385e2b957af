package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
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

func (c *PlanCmd) Run(ctx context.Context, g *Globals) error {
	pl, err := g.makePlan(ctx, c.Targets, false, nil)
	if err != nil {
		return err
	}
	plan := pl.plan
	if g.JSON {
		enc := json.NewEncoder(g.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(plan)
	}
	w := g.stdout
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
	if pl.policy != nil {
		fmt.Fprintf(w, "waves (from %s):\n", pl.policy.File)
	} else {
		fmt.Fprintln(w, "waves:")
	}
	for i, wv := range plan.Waves {
		fmt.Fprintf(w, "  %d: %s\n", i+1, strings.Join(wv, " "))
	}
	for _, m := range plan.Moved {
		fmt.Fprintf(w, "note: %s\n", m)
	}
	return nil
}
