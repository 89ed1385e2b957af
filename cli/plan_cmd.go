package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os/exec"
	"slices"
	"strings"

	"github.com/nix-hive/nix-hive/deploy"
	"github.com/nix-hive/nix-hive/eval"
	"github.com/nix-hive/nix-hive/internal/cmdline"
	"github.com/nix-hive/nix-hive/internal/quantity"
	"github.com/nix-hive/nix-hive/nixcmd"
	"github.com/nix-hive/nix-hive/plan"
	"github.com/nix-hive/nix-hive/starlark"
	"github.com/nix-hive/nix-hive/state"
)

// PlanCmd is `nix-hive plan`.
type PlanCmd struct {
	Fleet
	Steps
	Rollout
	Targets  []string `arg:"" optional:"" help:"Instance name globs, or @tag globs (default: all)."`
	Format   string   `enum:"text,json,dot,svg" default:"text" help:"text, json (as --json), dot (a Graphviz graph of the distribution tree) or svg (that graph drawn by Graphviz's dot)."`
	Offline  bool     `help:"Ask no host what it runs: compare with what hive.state recorded."`
	Build    bool     `help:"Build the systems first, so that the plan shows what changes in their closures."`
	Parallel int      `default:"32" help:"Hosts asked at once."`
}

func (c *PlanCmd) Help() string {
	return `Shows what deploy would do, changing nothing: each system's output path,
the closures that leave this machine and where they go, where every other
host substitutes from, the activation waves, and what changes on the
hosts.

What changes: the hosts are asked, in parallel, which system they run
(--offline asks none and takes what hive.state recorded). Hosts that run
the wanted system are counted unchanged; for the others, grouped by what
they run, the closure difference is shown as Nix's diff-closures shows it:
packages added, removed and changed (old -> new versions) and the size
delta. It needs the wanted systems built on this machine (--build, or
nix-hive build first); a running system this machine lacks is read from
one host that runs it. An unreachable host is named and the rest of the
plan still printed.

The text plan ends with a summary; with more than 50 hosts it lists the
hosts, and the pushes to hosts that are no store, only with -v. Closure
sizes are shown when the systems are built on this machine.

--format dot prints a Graphviz digraph: this machine, the stores, the hosts
that substitute from them (more than 50 of one store are drawn as one node
per wave unless -v), jump hops as dashed edges, one cluster per wave.
--format svg draws it with Graphviz's dot.`
}

// planVerboseHosts is how many hosts a text plan lists without -v.
const planVerboseHosts = 50

func (c *PlanCmd) Run(ctx context.Context, g *Globals, h *eval.Hive, st *state.File, pol *starlark.Policy, nix *nixcmd.Runner) error {
	format := c.Format
	if g.JSON {
		// --json predates --format and stays its alias.
		if format != "text" && format != "json" {
			return fmt.Errorf("--json and --format %s: choose one", format)
		}
		format = "json"
	}
	var dotPath string
	if format == "svg" {
		// Before Prepare evaluates every system: a missing tool should
		// not cost that wait.
		var err error
		if dotPath, err = exec.LookPath("dot"); err != nil {
			return cmdline.UsageError{Err: fmt.Errorf("--format svg needs Graphviz's dot (%w): install graphviz (apt-get install graphviz), or use --format dot and render it elsewhere", err)}
		}
	}
	mode := c.paths(eval.Evaluate)
	if c.Build {
		if c.skip("build") {
			return cmdline.UsageError{Err: fmt.Errorf("--build and --no build: choose one")}
		}
		mode = eval.Build
		if err := (&BuildHost{}).buildOnOwnPool(g, h, st, c.Fleet.transportConfig(h, st)); err != nil {
			return err
		}
	}
	prep, err := plan.Prepare(ctx, plan.Request{Hive: h, State: st, Policy: pol, Patterns: c.Targets, Paths: mode})
	if err != nil {
		return err
	}
	if err := prep.Unsigned(); err != nil {
		g.warnf("%v (deploy refuses it)", err)
	}
	var changes *planChanges
	if format == "text" || format == "json" {
		// A graph shows the distribution, not the hosts' systems: it asks
		// no host.
		if changes, err = c.changes(ctx, g, prep, st, nix); err != nil {
			return err
		}
	}
	if format == "json" {
		enc := json.NewEncoder(g.stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(newPlanJSON(prep.Plan, changes)); err != nil {
			return err
		}
		return unreachableError(g, changes)
	}
	sizes := planSizes(ctx, g, nix, prep.Plan)
	switch format {
	case "dot":
		return prep.Plan.WriteDot(g.stdout, dotOptions(g, prep, sizes))
	case "svg":
		return renderSVG(ctx, dotPath, g.stdout, prep, dotOptions(g, prep, sizes))
	}
	writePlan(g.stdout, prep, sizes, changes, g.Verbose)
	return unreachableError(g, changes)
}

// unreachableError fails a plan that could not ask every host what it
// runs, naming them (exit 1, as for every command a host fails).
func unreachableError(g *Globals, changes *planChanges) error {
	u := changes.unreachable()
	if len(u) == 0 {
		return nil
	}
	if len(u) > 10 {
		u = append(u[:10], fmt.Sprintf("and %d more", len(u)-10))
	}
	return failures(g, fmt.Sprintf("could not ask %s what it runs (the plan above lists why)", strings.Join(u, ", ")))
}

// changes compares the plan's systems with what the hosts run, or with
// hive.state when offline. The pool is made only when hosts are asked: a
// plan offline reads no SSH configuration.
func (c *PlanCmd) changes(ctx context.Context, g *Globals, prep *plan.Prepared, st *state.File, nix *nixcmd.Runner) (*planChanges, error) {
	req := deploy.ChangesRequest{Plan: prep.Plan, Inventory: prep.Hive.Inventory, State: st, Nix: nix.Quiet(), Parallel: c.Parallel}
	if !c.Offline {
		pool, err := openPool(g, prep.Hive, st, &c.Fleet)
		if err != nil {
			return nil, err
		}
		req.Remote = pool
		req.PublicKey, _ = prep.Hive.PublicKey() // no key: Prepare refused consumers already
	}
	pc := &planChanges{Offline: c.Offline, Systems: deploy.Changes(ctx, req)}
	pc.warnUntrusting(g, req.PublicKey)
	return pc, nil
}

// planSizes are the closure sizes of the plan's systems when this machine
// has them (they were built here); nil otherwise. Sizes only decorate a
// plan, so failing to learn them is a warning, not a failed plan.
func planSizes(ctx context.Context, g *Globals, nix *nixcmd.Runner, p *plan.Plan) plan.ClosureSizer {
	paths := slices.Sorted(maps.Values(p.Systems))
	sizes, err := plan.LoadSizes(ctx, nix.Quiet(), slices.Compact(paths))
	if err != nil {
		g.warnf("%v", err)
		return nil
	}
	if sizes == nil {
		return nil // not built here: a nil *Sizes in the interface would not compare nil
	}
	return sizes
}

func dotOptions(g *Globals, prep *plan.Prepared, sizes plan.ClosureSizer) plan.DotOptions {
	opts := plan.DotOptions{Inventory: prep.Hive.Inventory, Sizes: sizes}
	if g.Verbose {
		opts.Collapse = -1
	}
	if prep.Policy != nil {
		opts.Title = "waves from " + prep.Policy.File
	}
	return opts
}

// renderSVG pipes the plan's graph through `dot -Tsvg`.
func renderSVG(ctx context.Context, dotPath string, w io.Writer, prep *plan.Prepared, opts plan.DotOptions) error {
	var graph bytes.Buffer
	if err := prep.Plan.WriteDot(&graph, opts); err != nil {
		return err
	}
	var out, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, dotPath, "-Tsvg")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = &graph, &out, &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("graphviz: dot -Tsvg: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	// Written only once dot succeeded, so a failure leaves no half a file.
	if _, err := w.Write(out.Bytes()); err != nil {
		return fmt.Errorf("write svg: %w", err)
	}
	return nil
}

// planJSON is the plan as `plan --json` prints it. plan.Host.Wave is an
// index into Plan.Waves (0 for the first wave), but wave numbers users read
// (the text plan, deploy's events and report) count from 1: so does
// "wave" here, and a store-only host, which activates in no wave, has 0,
// as in deploy's events.
type planJSON struct {
	*plan.Plan
	Hosts map[string]planHostJSON `json:"hosts"`
	// Changes is what changes on the hosts.
	Changes *planChanges `json:"changes,omitempty"`
}

// planHostJSON shadows the embedded Wave (encoding/json takes the
// shallower field); every other field is plan.Host's own.
type planHostJSON struct {
	*plan.Host
	Wave int `json:"wave"`
}

func newPlanJSON(p *plan.Plan, changes *planChanges) planJSON {
	out := planJSON{Plan: p, Hosts: make(map[string]planHostJSON, len(p.Hosts)), Changes: changes}
	for n, h := range p.Hosts {
		wave := 0
		if h.Target {
			wave = h.Wave + 1
		}
		out.Hosts[n] = planHostJSON{Host: h, Wave: wave}
	}
	return out
}

// writePlan writes the text plan. A plan of more than planVerboseHosts
// hosts lists them only when verbose: a fleet's worth of lines would bury
// the summary that a reader of such a plan wants.
func writePlan(w io.Writer, prep *plan.Prepared, sizes plan.ClosureSizer, changes *planChanges, verbose bool) {
	p := prep.Plan
	all := verbose || len(p.Hosts) <= planVerboseHosts
	fmt.Fprintln(w, "systems:")
	for _, s := range slices.Sorted(maps.Keys(p.Systems)) {
		fmt.Fprintf(w, "  %s: %s\n", s, p.Systems[s])
	}
	writeTransfers(w, p, sizes, all)
	if all {
		fmt.Fprintln(w, "hosts:")
		for _, n := range p.Order {
			h := p.Hosts[n]
			role := "activate " + h.System
			if !h.Target {
				role = "store only"
			}
			fmt.Fprintf(w, "  %s: %s, closures %s\n", n, role, h.Source)
		}
	}
	if all {
		fmt.Fprintf(w, "waves%s:\n", policyFrom(prep))
		for i, wv := range p.Waves {
			fmt.Fprintf(w, "  %d: %s\n", i+1, strings.Join(wv, " "))
		}
	}
	for _, m := range p.Moved {
		fmt.Fprintf(w, "note: %s\n", m)
	}
	if changes != nil {
		writeChanges(w, changes)
	}
	writeSummary(w, prep, sizes, changes, all)
}

// writeTransfers lists what leaves this machine. Without all, pushes to
// hosts that serve no one else are counted rather than listed: the ones
// to stores are the plan's shape, the rest is one line per host.
func writeTransfers(w io.Writer, p *plan.Plan, sizes plan.ClosureSizer, all bool) {
	stores, _ := p.Stores()
	fmt.Fprintln(w, "transfers from this host:")
	others := 0
	for _, t := range p.Transfers {
		if h := p.Hosts[t.To]; !all && h != nil && !slices.Contains(stores, t.To) {
			others++
			continue
		}
		fmt.Fprintf(w, "  -> %s: %d closure(s)%s\n", t.To, len(t.Paths), sizeSuffix(sizes, t.Paths))
	}
	if others > 0 {
		fmt.Fprintf(w, "  -> %s that are no store (-v lists them)\n", quantity.Count(others, "other host"))
	}
}

func sizeSuffix(sizes plan.ClosureSizer, paths []string) string {
	if sizes == nil {
		return ""
	}
	if n, ok := sizes.ClosureSize(paths); ok {
		return ", " + quantity.Bytes(n)
	}
	return ""
}

// writeSummary ends the text plan with its numbers.
func writeSummary(w io.Writer, prep *plan.Prepared, sizes plan.ClosureSizer, changes *planChanges, all bool) {
	p := prep.Plan
	n := countPlan(p, changes, false)
	stores, urls := p.Stores()
	fmt.Fprintln(w, "summary:")
	fmt.Fprintf(w, "  systems: %d\n", len(p.Systems))
	hosts := quantity.Count(n.targets, "target")
	if n.storeOnly > 0 {
		hosts += fmt.Sprintf(", %d store only", n.storeOnly)
	}
	more := ""
	if !all {
		more = "; -v lists them"
	}
	fmt.Fprintf(w, "  hosts: %d (%s)%s\n", len(p.Hosts), hosts, more)
	fmt.Fprintf(w, "  stores: %d%s\n", len(stores)+len(urls), nameList(append(stores, urls...)))
	from := ""
	if !all {
		from = policyFrom(prep) // no waves section said it
	}
	fmt.Fprintf(w, "  waves%s: %d (hosts per wave: %s)\n", from, len(p.Waves), waveSizes(p.Waves))
	closures := 0
	for _, t := range p.Transfers {
		closures += len(t.Paths)
	}
	out := "size unknown (not built on this machine)"
	if n, ok := p.BytesOut(sizes); ok {
		out = "at most " + quantity.Bytes(n)
	}
	fmt.Fprintf(w, "  leaving this host: %s to %s, %s\n", quantity.Count(closures, "closure"), quantity.Count(len(p.Transfers), "destination"), out)
	if changes != nil {
		fmt.Fprintf(w, "  changes: %s\n", n.changes())
	}
}

// waveSizes is how many hosts each wave has, in order; a run of three or
// more equal waves (batches) is written once with its count: "1, 5 ×398, 2".
func waveSizes(waves [][]string) string {
	var parts []string
	for i := 0; i < len(waves); {
		j := i
		for j < len(waves) && len(waves[j]) == len(waves[i]) {
			j++
		}
		if j-i >= 3 {
			parts = append(parts, fmt.Sprintf("%d ×%d", len(waves[i]), j-i))
		} else {
			for k := i; k < j; k++ {
				parts = append(parts, fmt.Sprint(len(waves[k])))
			}
		}
		i = j
	}
	return strings.Join(parts, ", ")
}

// nameList is " (a, b, c)", at most ten names and a count of the rest.
func nameList(names []string) string {
	if len(names) == 0 {
		return ""
	}
	const shown = 10
	if len(names) <= shown {
		return " (" + strings.Join(names, ", ") + ")"
	}
	return fmt.Sprintf(" (%s and %d more)", strings.Join(names[:shown], ", "), len(names)-shown)
}

// policyFrom is " (from FILE)" when a policy made the waves.
func policyFrom(prep *plan.Prepared) string {
	if prep.Policy == nil {
		return ""
	}
	return " (from " + prep.Policy.File + ")"
}
