// Package deploy plans and executes a rollout: who receives which closure
// from where, in which order, and what happened to every host.
package deploy

import (
	"fmt"
	"sort"
	"strings"

	"github.com/nix-hive/nix-hive/eval"
)

// Goal is what switch-to-configuration is asked to do.
type Goal string

const (
	GoalSwitch      Goal = "switch"
	GoalBoot        Goal = "boot"
	GoalTest        Goal = "test"
	GoalDryActivate Goal = "dry-activate"
)

// ParseGoal validates a --goal value.
func ParseGoal(s string) (Goal, error) {
	switch g := Goal(s); g {
	case GoalSwitch, GoalBoot, GoalTest, GoalDryActivate:
		return g, nil
	}
	return "", fmt.Errorf("goal %q: want switch, boot, test or dry-activate", s)
}

// SetsProfile reports whether the goal makes the system the boot default.
func (g Goal) SetsProfile() bool { return g == GoalSwitch || g == GoalBoot }

// SourceKind says how a host gets its closures.
type SourceKind string

const (
	SourcePush  SourceKind = "push"  // nix copy from the deploy host
	SourceStore SourceKind = "store" // substituted from a store instance
	SourceCache SourceKind = "cache" // substituted from a store URL
)

// Source says where a host gets its closure from.
type Source struct {
	Kind SourceKind `json:"kind"`
	From string     `json:"from,omitempty"`
}

func (s Source) String() string {
	if s.Kind == SourcePush {
		return "pushed from this host"
	}
	return "substituted from " + s.From
}

// Host is one instance's part of the plan.
type Host struct {
	Name    string `json:"name"`
	System  string `json:"system"`
	OutPath string `json:"outPath"`
	// Target is false for store instances that only receive closures for
	// their consumers and are not activated.
	Target bool   `json:"target"`
	Source Source `json:"source"`
	// Paths is every closure this host must hold: its own system (if it is
	// a target) and its consumers' systems (if it is a store).
	Paths []string `json:"paths"`
	Wave  int      `json:"wave"`
	// Level orders activation within a wave: stores (level 0) before the
	// consumers that use them.
	Level int `json:"level"`
}

// Transfer is one closure leaving the deploy host.
type Transfer struct {
	To    string   `json:"to"` // instance name or store URL
	Paths []string `json:"paths"`
}

// Plan is everything deploy will do, computed without touching a host.
type Plan struct {
	Targets   []string          `json:"targets"`
	Systems   map[string]string `json:"systems"` // name -> out path
	Hosts     map[string]*Host  `json:"hosts"`
	Order     []string          `json:"order"` // every host: targets first in activation order, then store-only hosts
	Waves     [][]string        `json:"waves"`
	Transfers []Transfer        `json:"transfers"`
	// Moved lists stores pulled into an earlier wave than the policy gave
	// them, so that they activate before their consumers.
	Moved []string `json:"moved,omitempty"`
}

// Make computes the plan for targets. built has an output path for every
// system of the targets; waves (from a policy) lists targets in waves, nil
// meaning one wave in target order.
func Make(inv *eval.Inventory, targets []string, built map[string]eval.Built, waves [][]string) (*Plan, error) {
	p := &Plan{Targets: targets, Systems: map[string]string{}, Hosts: map[string]*Host{}}
	for _, s := range inv.SystemsOf(targets) {
		b, ok := built[s]
		if !ok || b.OutPath == "" {
			return nil, fmt.Errorf("system %s has no build (run without --no build)", s)
		}
		p.Systems[s] = b.OutPath
	}
	for _, t := range targets {
		in := inv.Instances[t]
		p.Hosts[t] = &Host{Name: t, System: in.System, OutPath: p.Systems[in.System], Target: true}
	}
	// Every path a host needs: its own, plus whatever its consumers need
	// from it, following store chains upwards.
	var need func(name, path string, depth int) error
	need = func(name, path string, depth int) error {
		if depth > len(inv.Instances) {
			return fmt.Errorf("instance %s: store chain too long (cycle?)", name)
		}
		h := p.Hosts[name]
		if h == nil {
			in := inv.Instances[name]
			if in == nil {
				return fmt.Errorf("unknown store instance %q", name)
			}
			h = &Host{Name: name, System: in.System}
			p.Hosts[name] = h
		}
		for _, have := range h.Paths {
			if have == path {
				return nil
			}
		}
		h.Paths = append(h.Paths, path)
		in := inv.Instances[name]
		switch {
		case in.Store == "":
			h.Source = Source{Kind: SourcePush}
		case in.StoreIsURL():
			h.Source = Source{Kind: SourceCache, From: in.Store}
		default:
			h.Source = Source{Kind: SourceStore, From: in.Store}
			return need(in.Store, path, depth+1)
		}
		return nil
	}
	for _, t := range targets {
		if err := need(t, p.Hosts[t].OutPath, 0); err != nil {
			return nil, err
		}
	}
	// Transfers from the deploy host: to each host that gets pushes and to
	// each store URL, once per path.
	urls := map[string][]string{}
	var urlOrder []string
	for _, name := range sortedHosts(p.Hosts) {
		h := p.Hosts[name]
		switch h.Source.Kind {
		case SourcePush:
			p.Transfers = append(p.Transfers, Transfer{To: name, Paths: h.Paths})
		case SourceCache:
			if _, ok := urls[h.Source.From]; !ok {
				urlOrder = append(urlOrder, h.Source.From)
			}
			urls[h.Source.From] = appendNew(urls[h.Source.From], h.Paths...)
		}
	}
	for _, u := range urlOrder {
		p.Transfers = append(p.Transfers, Transfer{To: u, Paths: urls[u]})
	}
	// Stores first: a host's level is one more than its store's.
	var level func(name string) int
	level = func(name string) int {
		in := inv.Instances[name]
		if in.Store == "" || in.StoreIsURL() {
			return 0
		}
		return level(in.Store) + 1
	}
	for _, h := range p.Hosts {
		h.Level = level(h.Name)
	}
	if err := p.setWaves(inv, targets, waves); err != nil {
		return nil, err
	}
	return p, nil
}

func (p *Plan) setWaves(inv *eval.Inventory, targets []string, waves [][]string) error {
	if waves == nil {
		waves = [][]string{targets}
	}
	wave := map[string]int{}
	for i, w := range waves {
		for _, n := range w {
			if _, ok := p.Hosts[n]; !ok || !p.Hosts[n].Target {
				return fmt.Errorf("wave %d: %q is not a target", i+1, n)
			}
			if _, dup := wave[n]; dup {
				return fmt.Errorf("wave %d: %q is already in wave %d", i+1, n, wave[n]+1)
			}
			wave[n] = i
		}
	}
	var missing []string
	for _, t := range targets {
		if _, ok := wave[t]; !ok {
			missing = append(missing, t)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("targets in no wave: %s", strings.Join(missing, ", "))
	}
	// A targeted store activates no later than its earliest consumer.
	for changed := true; changed; {
		changed = false
		for _, t := range targets {
			s := inv.Instances[t].Store
			if ws, ok := wave[s]; ok && ws > wave[t] {
				wave[s] = wave[t]
				p.Moved = append(p.Moved, fmt.Sprintf("%s moved to wave %d (store of %s)", s, wave[t]+1, t))
				changed = true
			}
		}
	}
	p.Waves = make([][]string, len(waves))
	for _, t := range targets {
		p.Hosts[t].Wave = wave[t]
	}
	// Within a wave: by level (stores first), then the order given.
	for _, w := range waves {
		for _, n := range w {
			p.Waves[wave[n]] = append(p.Waves[wave[n]], n)
		}
	}
	var nonEmpty [][]string
	for _, w := range p.Waves {
		sort.SliceStable(w, func(a, b int) bool { return p.Hosts[w[a]].Level < p.Hosts[w[b]].Level })
		if len(w) > 0 {
			nonEmpty = append(nonEmpty, w)
		}
	}
	p.Waves = nonEmpty
	for i, w := range p.Waves {
		for _, n := range w {
			p.Hosts[n].Wave = i
			p.Order = append(p.Order, n)
		}
	}
	for _, n := range sortedHosts(p.Hosts) {
		if !p.Hosts[n].Target {
			p.Order = append(p.Order, n)
		}
	}
	return nil
}

func sortedHosts(m map[string]*Host) []string {
	names := make([]string, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

func appendNew(xs []string, ys ...string) []string {
	for _, y := range ys {
		found := false
		for _, x := range xs {
			if x == y {
				found = true
				break
			}
		}
		if !found {
			xs = append(xs, y)
		}
	}
	return xs
}
