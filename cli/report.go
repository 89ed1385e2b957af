package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nix-hive/nix-hive/deploy"
	"github.com/nix-hive/nix-hive/internal/cmdline"
	"github.com/nix-hive/nix-hive/internal/quantity"
)

// render writes v as JSON with --json, else rows as an aligned table
// under header (tab-separated cells).
func (g *Globals) render(v any, header string, rows [][]string) error {
	if g.JSON {
		enc := json.NewEncoder(g.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, header)
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	return tw.Flush()
}

// finishReport prints the per-host summary and turns failures into the
// exit status.
func (g *Globals) finishReport(r *deploy.Report) error {
	var err error
	if g.JSON {
		err = json.NewEncoder(g.stdout).Encode(struct {
			Type string `json:"type"`
			*deploy.Report
		}{"report", r})
	} else {
		rows := summaryRows(r)
		var counts string
		if len(r.Order) > fullTableHosts && !g.Verbose {
			rows, counts = groupedRows(r, rows)
		}
		if len(rows) > 0 {
			err = g.render(r, "INSTANCE\tWAVE\tSYSTEM\tSTATUS\tSTEP\tTIME\tDETAIL", rows)
		}
		if counts != "" {
			fmt.Fprintln(g.stdout, counts)
		}
		if r.Stopped != "" {
			fmt.Fprintf(g.stdout, "rollout stopped: %s\n", r.Stopped)
		}
	}
	if err != nil {
		return fmt.Errorf("write the summary: %w", err)
	}
	if u := r.Unknown(); len(u) > 0 {
		fmt.Fprintf(g.stderr, "nix-hive: the outcome of the activation on %s is not known: it may still run there; it finishes on the host, returning to the previous system unless confirmed. `nix-hive status` shows each host's state.\n", strings.Join(u, ", "))
	}
	switch {
	case r.Interrupted:
		return fmt.Errorf("deploy interrupted; see the summary for each host's state: %w", context.Canceled)
	case !r.OK():
		msg := fmt.Sprintf("deploy failed on %d of %s", r.NotOK(), quantity.Count(r.Targets(), "host"))
		if s := r.StoresNotOK(); len(s) > 0 {
			msg += fmt.Sprintf("; %s that only receive closures did not: %s", quantity.Count(len(s), "store"), strings.Join(s, ", "))
		}
		if r.Stopped != "" {
			msg += "; rollout stopped: " + r.Stopped
		}
		return fmt.Errorf("%s", msg)
	}
	return nil
}

// fullTableHosts is the most hosts the summary lists one by one without
// -v: above it, a table of a thousand "ok" rows would hide the few that
// matter.
const fullTableHosts = 50

// groupedRows keeps the rows of hosts that did not end ok or unchanged and
// counts every status: "998 ok, 2 failed".
func groupedRows(r *deploy.Report, rows [][]string) (kept [][]string, counts string) {
	// Targets and stores that only received closures, each counted apart.
	type tally struct {
		n     map[deploy.Status]int
		order []deploy.Status
		total int
	}
	var targets, stores tally
	for i, name := range r.Order {
		res := r.Results[name]
		t := &targets
		if !res.Target {
			t = &stores
		}
		if t.n == nil {
			t.n = map[deploy.Status]int{}
		}
		if t.n[res.Status] == 0 {
			t.order = append(t.order, res.Status)
		}
		t.n[res.Status]++
		t.total++
		if st := res.Status; st != deploy.StatusOK && st != deploy.StatusUnchanged && st != deploy.StatusStored {
			kept = append(kept, rows[i])
		}
	}
	say := func(t tally) string {
		var parts []string
		for _, st := range t.order {
			parts = append(parts, fmt.Sprintf("%d %s", t.n[st], st))
		}
		return strings.Join(parts, ", ")
	}
	counts = fmt.Sprintf("%s: %s", quantity.Count(targets.total, "host"), say(targets))
	if stores.total > 0 {
		counts += fmt.Sprintf("; %s that only receive closures: %s", quantity.Count(stores.total, "store"), say(stores))
	}
	return kept, counts + " (every host with -v or --json)"
}

func summaryRows(r *deploy.Report) [][]string {
	var rows [][]string
	for _, n := range r.Order {
		res := r.Results[n]
		wave := "-"
		if res.Target {
			wave = fmt.Sprint(res.Wave)
		}
		detail := res.Error
		if detail == "" && len(res.Checks) > 0 {
			detail = strings.Join(res.Checks, "; ")
		}
		if detail == "" && !res.Target {
			detail = "store for other instances"
		}
		rows = append(rows, []string{n, wave, res.System, string(res.Status), string(res.Step),
			res.Duration.Round(100 * time.Millisecond).String(), oneLine(detail)})
	}
	return rows
}

func oneLine(s string) string {
	s = strings.ReplaceAll(s, "\n", " | ")
	if len(s) > 240 {
		s = s[:237] + "..."
	}
	return s
}

// failures prints msg and exits 1 without the generic error prefix
// repeating the table.
// fleetOutcome prints a fleet operation's table (row gives a host's cells
// and its error, "" when it went well; the table adds ok or the error) and
// says how it ended: failed on some hosts, interrupted, or nil.
func fleetOutcome[R any](ctx context.Context, g *Globals, op string, rows []R, header string, row func(R) (cells []string, err string)) error {
	failed := 0
	var table [][]string
	for _, r := range rows {
		cells, e := row(r)
		res := "ok"
		if e != "" {
			failed++
			res = "failed: " + oneLine(e)
		}
		table = append(table, append(cells, res))
	}
	if err := g.render(rows, header, table); err != nil {
		return err
	}
	if failed > 0 && ctx.Err() != nil {
		return fmt.Errorf("%s interrupted; see the summary for each host: %w", op, context.Canceled)
	}
	if failed > 0 {
		return failures(g, fmt.Sprintf("%s failed on %d of %d instances", op, failed, len(rows)))
	}
	return nil
}

func failures(g *Globals, msg string) error {
	fmt.Fprintf(g.stderr, "nix-hive: %s\n", msg)
	return cmdline.ExitError{Code: cmdline.Failure}
}
