package cli

import (
	"context"
	"fmt"

	"github.com/nix-hive/nix-hive/deploy"
	"github.com/nix-hive/nix-hive/eval"
	"github.com/nix-hive/nix-hive/state"
	"github.com/nix-hive/nix-hive/transport"
)

// StatusCmd is `nix-hive status`.
type StatusCmd struct {
	Fleet
	Steps
	Parallel int      `default:"32" help:"Hosts worked on at once."`
	Targets  []string `arg:"" optional:"" help:"Instance name globs, or @tag globs (default: all)."`
}

func (c *StatusCmd) Help() string {
	return `Asks every instance, in parallel, which system is active, which profile
generation it is on, and whether that is what the hive wants (drift). The
wanted systems are evaluated, not built. Exit status 1 when any instance
drifts or cannot be reached.`
}

func (c *StatusCmd) Run(ctx context.Context, g *Globals, h *eval.Hive, st *state.File, pool *transport.Pool) error {
	targets, err := h.Inventory.Select(c.Targets)
	if err != nil {
		return err
	}
	mode := c.paths(eval.Evaluate)
	builds, err := h.Paths(ctx, st, h.Inventory.SystemsOf(targets), mode)
	if err != nil {
		return err
	}
	want := map[string]string{}
	for s, b := range builds.Paths {
		want[s] = b.OutPath
	}
	rows := deploy.Inspect(ctx, pool, h.Inventory, targets, want, c.Parallel)
	drift := 0
	var table [][]string
	var why []string
	for _, r := range rows {
		state := "ok"
		if r.Drift != "" {
			drift++
			state = r.Drift
		}
		gen := fmt.Sprint(r.Generation)
		if r.Generation == 0 {
			// Not known, or no system profile yet: generations start at 1.
			gen = "-"
		}
		if r.Error != "" {
			// In full below the table: a host key error's fix is at its
			// end, and a table cell would cut it.
			why = append(why, fmt.Sprintf("%s: %s", r.Instance, r.Error))
		}
		table = append(table, []string{r.Instance, r.System, gen, r.Active, state})
	}
	if err := g.render(rows, "INSTANCE\tSYSTEM\tGEN\tACTIVE\tSTATE", table); err != nil {
		return err
	}
	if !g.JSON {
		for _, w := range why {
			fmt.Fprintf(g.stderr, "nix-hive: %s\n", w)
		}
	}
	if drift > 0 {
		return failures(g, fmt.Sprintf("%d of %d instances differ from the hive or could not be asked", drift, len(rows)))
	}
	return nil
}
