package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"text/tabwriter"

	"github.com/nix-hive/nix-hive/deploy"
)

// StatusCmd is `nix-hive status`.
type StatusCmd struct {
	Fleet
	Parallel int      `default:"32" help:"Hosts worked on at once."`
	Targets  []string `arg:"" optional:"" help:"Instance name globs, or @tag globs (default: all)."`
}

func (c *StatusCmd) Help() string {
	return `Asks every instance, in parallel, which system is active, which profile
generation it is on, and whether that is what the hive wants (drift). The
wanted systems are evaluated, not built. Exit status 1 when any instance
drifts or cannot be reached.`
}

func (c *StatusCmd) Run(ctx context.Context, g *Globals) error {
	inv, targets, err := g.targets(ctx, c.Targets)
	if err != nil {
		return err
	}
	ev, err := g.evaluator()
	if err != nil {
		return err
	}
	want := map[string]string{}
	if g.skip("build") {
		st, err := g.state()
		if err != nil {
			return err
		}
		for _, s := range inv.SystemsOf(targets) {
			if b, ok := st.System(s); ok {
				want[s] = b.OutPath
			}
		}
	} else {
		paths, err := ev.OutPaths(ctx, inv, inv.SystemsOf(targets))
		if err != nil {
			return err
		}
		for s, b := range paths {
			want[s] = b.OutPath
		}
	}
	pool, _, err := g.pool(ctx, c.Fleet)
	if err != nil {
		return err
	}
	defer pool.Close()
	rows := deploy.Inspect(ctx, pool, inv, targets, want, c.Parallel)
	drift := 0
	for _, r := range rows {
		if r.Drift != "" {
			drift++
		}
	}
	if g.JSON {
		enc := json.NewEncoder(g.stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rows); err != nil {
			return err
		}
	} else {
		tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "INSTANCE\tSYSTEM\tGEN\tACTIVE\tSTATE")
		for _, r := range rows {
			state := "ok"
			if r.Drift != "" {
				state = r.Drift
				if r.Error != "" {
					state += ": " + oneLine(r.Error)
				}
			}
			fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\n", r.Instance, r.System, r.Generation, r.Active, state)
		}
		tw.Flush()
	}
	if drift > 0 {
		return exitErrorMsg(g, fmt.Sprintf("%d of %d instances differ from the hive or could not be asked", drift, len(rows)))
	}
	return nil
}

// exitErrorMsg prints msg and exits 1 without the generic error prefix
// repeating the table.
func exitErrorMsg(g *Globals, msg string) error {
	fmt.Fprintf(g.stderr, "nix-hive: %s\n", msg)
	return exitError{code: exitFailure}
}
