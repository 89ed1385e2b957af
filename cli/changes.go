package cli

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"

	"github.com/nix-hive/nix-hive/deploy"
	"github.com/nix-hive/nix-hive/internal/quantity"
	"github.com/nix-hive/nix-hive/plan"
)

// planChanges is what a plan changes on the hosts.
type planChanges struct {
	// Offline: compared with hive.state, no host asked.
	Offline bool                  `json:"offline"`
	Systems []deploy.SystemChange `json:"systems"`
}

// unreachable are the targets a plan that asked the hosts could not ask
// (none offline: hive.state's gaps are not failures), sorted.
func (pc *planChanges) unreachable() []string {
	if pc == nil || pc.Offline {
		return nil
	}
	var out []string
	for _, s := range pc.Systems {
		out = append(out, slices.Collect(maps.Keys(s.Unknown))...)
	}
	slices.Sort(out)
	return out
}

// counts is how many targets change, stay and are not known.
func (pc *planChanges) counts() (change, same, unknown int) {
	for _, s := range pc.Systems {
		same += len(s.Unchanged)
		unknown += len(s.Unknown)
		change += len(s.Profiles)
		for _, f := range s.From {
			change += len(f.Instances)
		}
	}
	return change, same, unknown
}

// unknownShown is how many hosts of unknown state a text plan names.
const unknownShown = 10

// writeChanges writes the plan's "changes" section: per system, the
// instances grouped by what they run now and the closure difference
// each group sees.
func writeChanges(w io.Writer, pc *planChanges) {
	if pc.Offline {
		fmt.Fprintln(w, "changes (against hive.state; no host asked):")
	} else {
		fmt.Fprintln(w, "changes (against what the hosts run now):")
	}
	var unknown []string
	for _, s := range pc.Systems {
		n := len(s.Unchanged) + len(s.Unknown) + len(s.Profiles)
		for _, f := range s.From {
			n += len(f.Instances)
		}
		line := fmt.Sprintf("  %s: %s", s.System, quantity.Count(n, "host"))
		if len(s.Unchanged) > 0 {
			line += fmt.Sprintf(", %d unchanged%s", len(s.Unchanged), nameList(s.Unchanged))
		}
		if len(s.Profiles) > 0 {
			line += fmt.Sprintf(", %d get other profiles beside the same system%s", len(s.Profiles), nameList(s.Profiles))
		}
		if len(s.Unknown) > 0 {
			line += fmt.Sprintf(", %d not known", len(s.Unknown))
		}
		fmt.Fprintln(w, line)
		for _, f := range s.From {
			from := "no system"
			if f.Path != "" {
				from = f.Path
			}
			fmt.Fprintf(w, "    %s run %s%s:\n", quantity.Count(len(f.Instances), "host"), from, nameList(f.Instances))
			writeDiff(w, "      ", f)
		}
		for _, i := range slices.Sorted(maps.Keys(s.Unknown)) {
			unknown = append(unknown, i+": "+s.Unknown[i])
		}
	}
	slices.Sort(unknown)
	for i, u := range unknown {
		if i == unknownShown {
			fmt.Fprintf(w, "  not known: %d more\n", len(unknown)-unknownShown)
			break
		}
		fmt.Fprintf(w, "  not known: %s\n", u)
	}
}

func writeDiff(w io.Writer, indent string, f deploy.ChangeFrom) {
	if f.Diff == nil {
		fmt.Fprintf(w, "%sno closure diff: %s\n", indent, f.Error)
		return
	}
	d := f.Diff
	for _, p := range d.Packages {
		fmt.Fprintf(w, "%s%s\n", indent, p)
	}
	rebuilt := ""
	if d.Rebuilt > 0 {
		rebuilt = fmt.Sprintf("; %s rebuilt with the same version", quantity.Count(d.Rebuilt, "package"))
	}
	fmt.Fprintf(w, "%sclosure: %d → %d paths, %s → %s (%s)%s\n", indent, d.OldPaths, d.NewPaths,
		quantity.Bytes(d.OldSize), quantity.Bytes(d.NewSize), deploy.SignedBytes(d.SizeDelta()), rebuilt)
}

// warnUntrusting says, before anything is touched, which consumers will
// refuse the closures their store serves because their nix.conf does not
// trust the hive's key, and the two ways out.
func (pc *planChanges) warnUntrusting(g *Globals, key string) {
	var who []string
	for _, s := range pc.Systems {
		who = append(who, s.Untrusting...)
	}
	if len(who) == 0 {
		return
	}
	slices.SortFunc(who, func(a, b string) int { return strings.Compare(a, b) })
	names := strings.Join(who, ", ")
	if len(who) > 10 {
		names = strings.Join(who[:10], ", ") + fmt.Sprintf(" and %d more", len(who)-10)
	}
	g.warnf("%s substitute from a store, and their nix.conf does not trust the hive's key %s: they will refuse its closures. Set nix-hive.publicKey on them (lib/module.nix), or deploy with --trust-hive-key: %s",
		quantity.Count(len(who), "consumer"), key, names)
}

// planCounts are the numbers a plan states, computed once for its
// summary and for deploy --confirm's question, so that they agree: the
// targets, and of them those whose system changes, those that run it
// already (left alone, unless --force) and those not known; and the
// stores that only receive closures.
type planCounts struct {
	targets, change, unchanged, unknown, storeOnly int
	force                                          bool
}

func countPlan(p *plan.Plan, changes *planChanges, force bool) planCounts {
	n := planCounts{targets: len(p.Targets), storeOnly: len(p.Hosts) - len(p.Targets), force: force}
	if changes != nil {
		n.change, n.unchanged, n.unknown = changes.counts()
	}
	return n
}

// changes is the summary's changes line.
func (n planCounts) changes() string {
	parts := []string{fmt.Sprintf("%d to change", n.change), fmt.Sprintf("%d unchanged", n.unchanged)}
	if n.unknown > 0 {
		parts = append(parts, fmt.Sprintf("%d not known", n.unknown))
	}
	return strings.Join(parts, ", ")
}

// activated is how many targets a deploy activates.
func (n planCounts) activated() int {
	if n.force {
		return n.targets
	}
	return n.change + n.unknown
}

// question is deploy --confirm's, in the summary's numbers.
func (n planCounts) question(goal string) string {
	left := ""
	switch {
	case n.force && n.unchanged > 0:
		left = fmt.Sprintf("; --force: the %d unchanged too", n.unchanged)
	case n.unchanged > 0:
		left = fmt.Sprintf("; the %d unchanged are left alone", n.unchanged)
	}
	return fmt.Sprintf("Deploy (%s) to %d of %s (%s%s)? [y/N] ", goal, n.activated(), quantity.Count(n.targets, "target"), n.changes(), left)
}
