package plan

import (
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"

	"github.com/nix-hive/nix-hive/eval"
)

// SourceKind says how a host gets its closures.
type SourceKind string

const (
	SourcePush  SourceKind = "push"  // nix copy from the deploy host
	SourceStore SourceKind = "store" // substituted from a store instance
	SourceCache SourceKind = "cache" // substituted from a store URL
	SourceLocal SourceKind = "local" // built on the host itself (apply-local)
	// SourceBuilder: substituted from the build host whose store holds
	// the host's every path (nothing moves when it is that host).
	SourceBuilder SourceKind = "builder"
)

// Source says where a host gets its closure from.
type Source struct {
	Kind SourceKind `json:"kind"`
	From string     `json:"from,omitempty"`
}

func (s Source) String() string {
	switch s.Kind {
	case SourcePush:
		return "pushed from this host"
	case SourceLocal:
		return "built here: this machine is the host"
	case SourceBuilder:
		return "substituted from its build host " + s.From
	}
	return "substituted from " + s.From
}

// Local makes the plan apply-local's: the one host is this machine,
// which built its closure, so nothing moves.
func (p *Plan) Local() {
	for _, h := range p.Hosts {
		h.Source = Source{Kind: SourceLocal}
	}
	p.Transfers = nil
}

// Host is one instance's part of the plan.
type Host struct {
	Name    string `json:"name"`
	System  string `json:"system"`
	OutPath string `json:"outPath"`
	// Target is false for store instances that only receive closures for
	// their consumers and are not activated.
	Target bool `json:"target"`
	// Specialisation is the specialisation of the system a target
	// activates ("" for the system itself), and Active its own toplevel,
	// which then runs (see Runs).
	Specialisation string `json:"specialisation,omitempty"`
	Active         string `json:"active,omitempty"`
	// Profiles are a target's profiles beside the system one, by name,
	// activated after the system.
	Profiles []eval.BuiltProfile `json:"profiles,omitempty"`
	Source   Source              `json:"source"`
	// Paths is every closure this host must hold: its own system (if it is
	// a target) and its consumers' systems (if it is a store).
	Paths []string `json:"paths"`
	Wave  int      `json:"wave"`
	// Level orders activation within a wave: stores (level 0) before the
	// consumers that use them.
	Level int `json:"level"`
}

// Activates is what a target activates: its system, then its profiles'
// packages.
func (h *Host) Activates() []string {
	out := []string{h.OutPath}
	for _, p := range h.Profiles {
		out = append(out, p.Path)
	}
	return out
}

// Transfer is one closure leaving the deploy host.
type Transfer struct {
	To    string   `json:"to"` // instance name or store URL
	Paths []string `json:"paths"`
}

// Plan is everything deploy will do, computed without touching a host.
type Plan struct {
	Targets []string          `json:"targets"`
	Systems map[string]string `json:"systems"` // name -> out path
	Hosts   map[string]*Host  `json:"hosts"`
	Order   []string          `json:"order"` // every host: targets first in activation order, then store-only hosts
	Waves   [][]string        `json:"waves"`
	// WaveOrigin is, for each of Waves, the index of the wave given to
	// Make it is (Waves leaves out waves that ended up empty).
	WaveOrigin []int      `json:"-"`
	Transfers  []Transfer `json:"transfers"`
	// BuiltOn maps the paths built on a build host to it: its store holds
	// them, this machine's need not.
	BuiltOn map[string]string `json:"builtOn,omitempty"`
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
		h := &Host{Name: t, System: in.System, OutPath: p.Systems[in.System], Target: true}
		profiles, err := inv.BuiltProfiles(in.System, built[in.System])
		if err != nil {
			return nil, err
		}
		h.Profiles = profiles
		p.Hosts[t] = h
	}
	for _, t := range targets {
		for _, path := range p.Hosts[t].Activates() {
			if err := p.need(inv, t, path, 0); err != nil {
				return nil, err
			}
		}
	}
	for _, s := range inv.SystemsOf(targets) {
		if on := built[s].On; on != "" {
			if p.BuiltOn == nil {
				p.BuiltOn = map[string]string{}
			}
			for _, path := range built[s].Roots() {
				p.BuiltOn[path] = on
			}
		}
	}
	p.fromBuilders()
	p.setTransfers()
	for _, h := range p.Hosts {
		h.Level = level(inv, h.Name)
	}
	if err := p.setWaves(inv, targets, waves); err != nil {
		return nil, err
	}
	return p, nil
}

// need records that host name must hold path: its own system, or one its
// consumers need from it, following store chains upwards.
func (p *Plan) need(inv *eval.Inventory, name, path string, depth int) error {
	if depth > len(inv.Instances) {
		return fmt.Errorf("instance %s: store chain too long (cycle?)", name)
	}
	in := inv.Instances[name]
	if in == nil {
		return fmt.Errorf("unknown store instance %q", name)
	}
	h := p.Hosts[name]
	if h == nil {
		h = &Host{Name: name, System: in.System}
		p.Hosts[name] = h
	}
	if slices.Contains(h.Paths, path) {
		return nil
	}
	h.Paths = append(h.Paths, path)
	switch {
	case in.Store == "":
		h.Source = Source{Kind: SourcePush}
	case in.StoreIsURL():
		h.Source = Source{Kind: SourceCache, From: in.Store}
	default:
		h.Source = Source{Kind: SourceStore, From: in.Store}
		return p.need(inv, in.Store, path, depth+1)
	}
	return nil
}

// fromBuilders has each host that would be pushed to, and whose every
// path one build host holds, substitute from that build host instead:
// the closure goes from the builder straight to the stores, and this
// machine never holds it. A host whose paths are in several places gets
// pushes, the builders' paths coming through this machine.
func (p *Plan) fromBuilders() {
	if len(p.BuiltOn) == 0 {
		return
	}
	for _, h := range p.Hosts {
		if h.Source.Kind != SourcePush || len(h.Paths) == 0 {
			continue
		}
		on := p.BuiltOn[h.Paths[0]]
		if on != "" && !slices.ContainsFunc(h.Paths, func(path string) bool { return p.BuiltOn[path] != on }) {
			h.Source = Source{Kind: SourceBuilder, From: on}
		}
	}
}

// setTransfers lists what leaves the deploy host: to each host that gets
// pushes, and to each store URL once per path.
func (p *Plan) setTransfers() {
	urls := map[string][]string{}
	var urlOrder []string
	for _, name := range slices.Sorted(maps.Keys(p.Hosts)) {
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
}

// level orders hosts so that stores come first: one more than its store's.
func level(inv *eval.Inventory, name string) int {
	in := inv.Instances[name]
	if in.Store == "" || in.StoreIsURL() {
		return 0
	}
	return level(inv, in.Store) + 1
}

func (p *Plan) setWaves(inv *eval.Inventory, targets []string, waves [][]string) error {
	if waves == nil {
		waves = [][]string{targets}
	}
	wave, err := p.waveOf(targets, waves)
	if err != nil {
		return err
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
	p.order(waves, wave)
	return nil
}

// waveOf checks the policy's waves and says which wave each target is in.
func (p *Plan) waveOf(targets []string, waves [][]string) (map[string]int, error) {
	wave := map[string]int{}
	for i, w := range waves {
		for _, n := range w {
			if _, ok := p.Hosts[n]; !ok || !p.Hosts[n].Target {
				return nil, fmt.Errorf("wave %d: %q is not a target", i+1, n)
			}
			if _, dup := wave[n]; dup {
				return nil, fmt.Errorf("wave %d: %q is already in wave %d", i+1, n, wave[n]+1)
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
		return nil, fmt.Errorf("targets in no wave: %s", strings.Join(missing, ", "))
	}
	return wave, nil
}

// order sets the plan's waves (empty ones dropped) and its host order:
// within a wave by level (stores first), then the order given; store-only
// hosts last.
func (p *Plan) order(waves [][]string, wave map[string]int) {
	p.Waves = make([][]string, len(waves))
	for _, w := range waves {
		for _, n := range w {
			p.Waves[wave[n]] = append(p.Waves[wave[n]], n)
		}
	}
	var nonEmpty [][]string
	for i, w := range p.Waves {
		sort.SliceStable(w, func(a, b int) bool { return p.Hosts[w[a]].Level < p.Hosts[w[b]].Level })
		if len(w) > 0 {
			nonEmpty = append(nonEmpty, w)
			p.WaveOrigin = append(p.WaveOrigin, i)
		}
	}
	p.Waves = nonEmpty
	for i, w := range p.Waves {
		for _, n := range w {
			p.Hosts[n].Wave = i
			p.Order = append(p.Order, n)
		}
	}
	for _, n := range slices.Sorted(maps.Keys(p.Hosts)) {
		if !p.Hosts[n].Target {
			p.Order = append(p.Order, n)
		}
	}
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
