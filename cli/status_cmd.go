package cli

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"golang.org/x/term"

	"github.com/nix-hive/nix-hive/deploy"
	"github.com/nix-hive/nix-hive/eval"
	"github.com/nix-hive/nix-hive/fanout"
	"github.com/nix-hive/nix-hive/host"
	"github.com/nix-hive/nix-hive/internal/cmdline"
	"github.com/nix-hive/nix-hive/state"
	"github.com/nix-hive/nix-hive/transport"
)

// StatusCmd is `nix-hive status`.
type StatusCmd struct {
	Fleet
	Steps
	Parallel int           `default:"32" help:"Hosts worked on at once."`
	Watch    time.Duration `placeholder:"INTERVAL" help:"Ask again INTERVAL (5s, say) after each round until interrupted, over connections kept open."`
	Count    int           `help:"With --watch, stop after this many rounds (0: until interrupted)."`
	Targets  []string      `arg:"" optional:"" help:"Instance name globs, or @tag globs (default: all)."`
}

func (c *StatusCmd) Help() string {
	return `Asks every instance, in parallel, which system is active, which profile
generation it is on, and whether that is what the hive wants (drift). The
wanted systems are evaluated, not built. Exit status 1 when any instance
drifts or cannot be reached.

With --watch, the connections stay open and status asks again after each
interval, printing one table (or one JSON array) per round, until
interrupted or --count rounds are done; the exit status is the last
complete round's. A host's state is read as files over its sftp session,
opened once, which starts no process on the host: a round costs the
hosts far less than a new status would. (Where the host has no sftp, or
an activation may be running, the usual query asks instead.)`
}

func (c *StatusCmd) Run(ctx context.Context, g *Globals, h *eval.Hive, st *state.File, pool *transport.Pool) error {
	switch {
	case c.Watch < 0:
		return cmdline.UsageError{Err: fmt.Errorf("--watch %s: want an interval above 0", c.Watch)}
	case c.Count < 0:
		return cmdline.UsageError{Err: fmt.Errorf("--count %d: want 0 (no limit) or more rounds", c.Count)}
	case c.Count > 0 && c.Watch == 0:
		return cmdline.UsageError{Err: fmt.Errorf("--count needs --watch")}
	}
	targets, err := h.Inventory.Select(c.Targets)
	if err != nil {
		return err
	}
	mode := c.paths(eval.Evaluate)
	builds, err := h.Paths(ctx, st, h.Inventory.SystemsOf(targets), mode)
	if err != nil {
		return err
	}
	want := builds.Paths
	files := hostFiles(pool, c.Watch != 0)
	if files == nil {
		return c.report(g, reached(ctx, h.Inventory, pool, deploy.Inspect(ctx, pool, h.Inventory, targets, want, c.Parallel)))
	}
	w := &deploy.Watcher{Remote: pool, Files: files}
	if c.Watch == 0 {
		return c.report(g, reached(ctx, h.Inventory, pool, w.Inspect(ctx, h.Inventory, targets, want, c.Parallel)))
	}
	return c.watch(ctx, g, w, pool, h.Inventory, targets, want)
}

// watch runs --watch's rounds and returns the last complete round's
// outcome.
func (c *StatusCmd) watch(ctx context.Context, g *Globals, w *deploy.Watcher, pool *transport.Pool, inv *eval.Inventory, targets []string, want map[string]eval.Built) error {
	last := fmt.Errorf("interrupted before the first round completed: %w", context.Canceled)
	for round := 1; c.Count == 0 || round <= c.Count; round++ {
		rows := w.Inspect(ctx, inv, targets, want, c.Parallel)
		if ctx.Err() != nil {
			break // an interrupted round is not shown: the last complete one stands
		}
		if !g.JSON {
			fmt.Fprintf(g.stdout, "%s-- round %d, %s\n", clearScreen(g), round, time.Now().Format("15:04:05"))
		}
		last = c.report(g, reached(ctx, inv, pool, rows))
		if c.Count > 0 && round == c.Count {
			break
		}
		select {
		case <-ctx.Done():
		case <-time.After(c.Watch):
		}
	}
	return last
}

// clearScreen starts a round of --watch at the top of a terminal; rounds
// written elsewhere follow each other.
func clearScreen(g *Globals) string {
	if f, ok := g.stdout.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		return "\x1b[H\x1b[2J"
	}
	return "\n"
}

// reached fills in, for the rows of instances with several addresses,
// the one their connection reached (the first that answered): a
// connection this command made knows it, the holder says it for its own.
func reached(ctx context.Context, inv *eval.Inventory, pool *transport.Pool, rows []deploy.StatusRow) []deploy.StatusRow {
	fanout.Each(ctx, len(rows), fanout.DefaultLimit, func(ctx context.Context, i int) {
		r := &rows[i]
		if len(inv.Instances[r.Instance].Hosts) < 2 || r.Error != "" {
			return
		}
		if pool.Reached(r.Instance) == "" {
			pool.Client(ctx, r.Instance) // through the holder: it says which
		}
		r.Address = pool.Reached(r.Instance)
	})
	return rows
}

// report prints one round's table and turns drift into the exit status.
func (c *StatusCmd) report(g *Globals, rows []deploy.StatusRow) error {
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
		active := r.Active
		if r.Specialisation != "" {
			active += " (specialisation " + r.Specialisation + ")"
		}
		table = append(table, []string{r.Instance, r.System, gen, active, state, r.Address, profileNames(r.ProfileList())})
	}
	// Columns no row has a value for are left out.
	header := []string{"INSTANCE", "SYSTEM", "GEN", "ACTIVE", "STATE", "ADDRESS", "PROFILES"}
	for col := len(header) - 1; col >= 5; col-- {
		if slices.ContainsFunc(table, func(row []string) bool { return row[col] != "" }) {
			continue
		}
		header = slices.Delete(header, col, col+1)
		for i := range table {
			table[i] = slices.Delete(table[i], col, col+1)
		}
	}
	if err := g.render(rows, strings.Join(header, "\t"), table); err != nil {
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

// profileNames says which profiles beside the system one a host has, as
// nix-hive set them: "home (alice)", one per profile.
func profileNames(ps []host.Profile) string {
	names := make([]string, len(ps))
	for i, p := range ps {
		names[i] = p.Name + " (" + p.User + ")"
	}
	return strings.Join(names, ", ")
}
