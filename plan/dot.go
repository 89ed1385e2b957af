package plan

import (
	"bufio"
	"cmp"
	"context"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"

	"github.com/nix-hive/nix-hive/eval"
	"github.com/nix-hive/nix-hive/internal/quantity"
	"github.com/nix-hive/nix-hive/nixcmd"
)

// What a plan's renderings (plan's text summary, the Graphviz graph) need
// beyond the plan itself: closure sizes, the stores, and the graph.

// ClosureSizer tells how many bytes a set of closures holds: the NAR size
// of every path in their union, each path counted once. ok is false when
// it does not know (a path that is not built on this machine).
type ClosureSizer interface {
	ClosureSize(paths []string) (bytes uint64, ok bool)
}

// Sizes is a ClosureSizer over the local store.
type Sizes struct {
	infos map[string]nixcmd.PathInfo
}

// LoadSizes asks the local store about the closures of paths, in one
// `nix path-info --recursive`. It returns nil, and no error, when one of
// paths is not valid here: plan evaluates without building, and a size it
// cannot know is left out rather than guessed.
//
// Why not `nix path-info -S` (closureSize): a transfer carries several
// systems that share most of their closure, and summing their closure
// sizes would count the shared paths once per system; with every path's
// references at hand the union is counted exactly.
func LoadSizes(ctx context.Context, nix *nixcmd.Runner, paths []string) (*Sizes, error) {
	if len(paths) == 0 {
		return &Sizes{infos: map[string]nixcmd.PathInfo{}}, nil
	}
	// Asked recursively about a path it does not have, nix fails without
	// describing anything; asked plainly, it says which paths are invalid.
	top, err := nix.PathInfo(ctx, paths...)
	if err != nil {
		return nil, fmt.Errorf("closure sizes: %w", err)
	}
	for _, i := range top {
		if !i.Valid {
			return nil, nil
		}
	}
	all, err := nix.PathInfo(ctx, append([]string{"--recursive"}, paths...)...)
	if err != nil {
		return nil, fmt.Errorf("closure sizes: %w", err)
	}
	s := &Sizes{infos: make(map[string]nixcmd.PathInfo, len(all))}
	for _, i := range all {
		s.infos[i.Path] = i
	}
	return s, nil
}

// ClosureSize implements ClosureSizer; a nil *Sizes knows nothing.
func (s *Sizes) ClosureSize(paths []string) (uint64, bool) {
	if s == nil {
		return 0, false
	}
	seen := map[string]bool{}
	var total uint64
	stack := slices.Clone(paths)
	for len(stack) > 0 {
		p := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if seen[p] {
			continue
		}
		seen[p] = true
		i, ok := s.infos[p]
		if !ok {
			return 0, false
		}
		total += i.NarSize
		stack = append(stack, i.References...)
	}
	return total, true
}

// Stores are where the plan's hosts substitute from: store instances and
// store URLs, each sorted.
func (p *Plan) Stores() (instances, urls []string) {
	in, u := map[string]bool{}, map[string]bool{}
	for _, h := range p.Hosts {
		switch h.Source.Kind {
		case SourceStore:
			in[h.Source.From] = true
		case SourceCache:
			u[h.Source.From] = true
		}
	}
	return slices.Sorted(maps.Keys(in)), slices.Sorted(maps.Keys(u))
}

// BytesOut is the most the deploy host sends: each transfer's closures,
// once per destination (nix copy skips what a destination already has, so
// the real figure can be lower). ok is false when a size is unknown.
func (p *Plan) BytesOut(s ClosureSizer) (bytes uint64, ok bool) {
	if s == nil {
		return 0, false
	}
	for _, t := range p.Transfers {
		n, ok := s.ClosureSize(t.Paths)
		if !ok {
			return 0, false
		}
		bytes += n
	}
	return bytes, true
}

// DefaultCollapse is how many consumers of one source WriteDot draws one
// by one; a source with more gets one node per wave (and jump host) for
// them, so that a fleet of thousands still makes a graph one can read.
const DefaultCollapse = 50

// DotOptions says how WriteDot draws a plan.
type DotOptions struct {
	// Inventory gives the jump hosts; nil draws no jump hops.
	Inventory *eval.Inventory
	// Sizes adds bytes to the edges' closure counts; nil leaves them out.
	Sizes ClosureSizer
	// Collapse is how many consumers of one source are drawn one by one
	// (0: DefaultCollapse, negative: all of them, however many).
	Collapse int
	// Title labels the graph (e.g. where the waves come from).
	Title string
}

// Node IDs carry a kind prefix so that an instance, a store URL, a group
// and the deploy host can never share one.
const (
	dotDeploy = "deploy"
	dotHost   = "h:"
	dotURL    = "u:"
	dotGroup  = "g:"
)

// dotGroupNode is the leaf consumers of one source, in one wave, reached
// through one jump host, drawn as one node.
type dotGroupNode struct {
	id, source, jump string
	wave             int // as a user reads it: 1 is the first wave
	hosts            []string
}

// dotGraph is what WriteDot draws, decided before anything is written.
type dotGraph struct {
	p      *Plan
	opts   DotOptions
	source map[string]string // host -> ID of the node it gets closures from
	// consumers are the hosts whose source is a node, by the node's ID.
	consumers map[string][]string
	groups    []*dotGroupNode
	grouped   map[string]bool // hosts drawn inside a group
	jumps     map[string]string
}

// WriteDot writes the plan as a Graphviz digraph of its distribution tree:
// the deploy host, the stores (instances and URLs) closures go to, and the
// consumers that substitute from them, each edge labelled with what moves
// along it; jump hops are dashed edges from the jump host; targets sit in
// one cluster per wave.
func (p *Plan) WriteDot(w io.Writer, opts DotOptions) error {
	if opts.Collapse == 0 {
		opts.Collapse = DefaultCollapse
	}
	g := &dotGraph{p: p, opts: opts, source: map[string]string{}, consumers: map[string][]string{},
		grouped: map[string]bool{}, jumps: map[string]string{}}
	if err := g.build(); err != nil {
		return err
	}
	bw := bufio.NewWriter(w)
	g.write(bw)
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("write dot: %w", err)
	}
	return nil
}

func (g *dotGraph) build() error {
	p := g.p
	names := slices.Sorted(maps.Keys(p.Hosts))
	for _, n := range names {
		h := p.Hosts[n]
		var src string
		switch h.Source.Kind {
		case SourcePush:
			src = dotDeploy
		case SourceStore:
			if p.Hosts[h.Source.From] == nil {
				return fmt.Errorf("dot: host %s: store %s is not in the plan", n, h.Source.From)
			}
			src = dotHost + h.Source.From
		case SourceCache:
			src = dotURL + h.Source.From
		case SourceBuilder:
			src = dotURL + h.Source.From
			if p.Hosts[h.Source.From] != nil {
				src = dotHost + h.Source.From
			}
		default:
			return fmt.Errorf("dot: host %s: unknown source kind %q", n, h.Source.Kind)
		}
		g.source[n] = src
		g.consumers[src] = append(g.consumers[src], n)
	}
	if inv := g.opts.Inventory; inv != nil {
		// Every jump on the way to a planned host is drawn, including jump
		// hosts that are no part of the plan. A chain ends at a host whose
		// hop is known already, so even a cycle (which the hive's
		// evaluation refuses) would end.
		for _, n := range names {
			for cur := n; ; {
				in := inv.Instances[cur]
				if in == nil || in.Jump == "" || g.jumps[cur] != "" {
					break
				}
				g.jumps[cur] = in.Jump
				cur = in.Jump
			}
		}
	}
	if g.opts.Collapse > 0 {
		g.collapse()
	}
	return nil
}

// collapse groups the leaf consumers (hosts nothing else is drawn from) of
// every source that has more than opts.Collapse of them.
func (g *dotGraph) collapse() {
	isJump := map[string]bool{}
	for _, j := range g.jumps {
		isJump[j] = true
	}
	for _, src := range slices.Sorted(maps.Keys(g.consumers)) {
		var leaves []string
		for _, n := range g.consumers[src] {
			if len(g.consumers[dotHost+n]) == 0 && !isJump[n] && g.p.Hosts[n].Target {
				leaves = append(leaves, n)
			}
		}
		if len(leaves) <= g.opts.Collapse {
			continue
		}
		byKey := map[string]*dotGroupNode{}
		for _, n := range leaves {
			wave, jump := g.p.Hosts[n].Wave+1, g.jumps[n]
			id := fmt.Sprintf("%s%s|%d|%s", dotGroup, src, wave, jump)
			grp := byKey[id]
			if grp == nil {
				grp = &dotGroupNode{id: id, source: src, jump: jump, wave: wave}
				byKey[id] = grp
				g.groups = append(g.groups, grp)
			}
			grp.hosts = append(grp.hosts, n)
		}
	}
	// A group of one (a canary, say) is clearer drawn as the host it is.
	g.groups = slices.DeleteFunc(g.groups, func(grp *dotGroupNode) bool { return len(grp.hosts) == 1 })
	for _, grp := range g.groups {
		for _, n := range grp.hosts {
			g.grouped[n] = true
		}
	}
	slices.SortFunc(g.groups, func(a, b *dotGroupNode) int {
		return cmp.Or(cmp.Compare(a.wave, b.wave), strings.Compare(a.id, b.id))
	})
}

func (g *dotGraph) write(w io.Writer) {
	p := g.p
	fmt.Fprintln(w, "digraph plan {")
	fmt.Fprintln(w, "  rankdir=LR;")
	fmt.Fprintln(w, `  fontname="Helvetica";`)
	fmt.Fprintln(w, `  node [shape=box, style=rounded, fontname="Helvetica"];`)
	fmt.Fprintln(w, `  edge [fontname="Helvetica", fontsize=10];`)
	legend := []string{"bold: pushed from this machine, solid: substituted from a store"}
	if len(g.jumps) > 0 {
		legend[0] += ", dashed: ssh jump hop"
	}
	if g.opts.Title != "" {
		legend = append([]string{g.opts.Title}, legend...)
	}
	fmt.Fprintf(w, "  label=%s;\n  labelloc=t;\n", dotLabel(legend...))
	fmt.Fprintf(w, "  %s [label=%s, shape=box, style=\"filled,bold\", fillcolor=\"#dbe9f6\"];\n",
		dotQuote(dotDeploy), dotLabel("deploy host", "(this machine)"))
	_, urls := p.Stores()
	for _, u := range urls {
		fmt.Fprintf(w, "  %s [label=%s, shape=cylinder, style=filled, fillcolor=\"#fff3c4\"];\n",
			dotQuote(dotURL+u), dotLabel(u, "binary cache"))
	}
	// Targets, one cluster per wave, in activation order.
	for i, wave := range p.Waves {
		fmt.Fprintf(w, "  subgraph %s {\n", dotQuote(fmt.Sprintf("cluster_wave_%d", i+1)))
		fmt.Fprintf(w, "    label=%s;\n    style=dashed;\n    color=\"#888888\";\n",
			dotQuote(fmt.Sprintf("wave %d (%s)", i+1, quantity.Count(len(wave), "host"))))
		for _, n := range wave {
			if !g.grouped[n] {
				g.writeHost(w, "    ", n)
			}
		}
		for _, grp := range g.groups {
			if grp.wave == i+1 {
				g.writeGroup(w, "    ", grp)
			}
		}
		fmt.Fprintln(w, "  }")
	}
	// Store-only hosts activate in no wave.
	for _, n := range p.Order {
		if !p.Hosts[n].Target {
			g.writeHost(w, "  ", n)
		}
	}
	// Jump hosts the plan does not otherwise include.
	jumpOnly := map[string]bool{}
	for _, j := range g.jumps {
		jumpOnly[j] = p.Hosts[j] == nil
	}
	for _, j := range slices.Sorted(maps.Keys(jumpOnly)) {
		if jumpOnly[j] {
			fmt.Fprintf(w, "  %s [label=%s, style=\"rounded,dotted\"];\n", dotQuote(dotHost+j), dotLabel(j, "jump host only"))
		}
	}
	g.writeEdges(w)
	fmt.Fprintln(w, "}")
}

func (g *dotGraph) writeHost(w io.Writer, indent, n string) {
	h := g.p.Hosts[n]
	lines := []string{n, "system " + h.System}
	style := []string{"rounded"}
	if !h.Target {
		// Receives closures for its consumers but is not activated.
		lines[1] = "store only"
		style = append(style, "dashed")
	}
	fill := ""
	if c := len(g.consumers[dotHost+n]); c > 0 {
		lines = append(lines, "store for "+quantity.Count(c, "host"))
		style = append(style, "filled")
		fill = `, fillcolor="#fff3c4"`
	}
	fmt.Fprintf(w, "%s%s [label=%s, style=%s%s];\n", indent, dotQuote(dotHost+n), dotLabel(lines...),
		dotQuote(strings.Join(style, ",")), fill)
}

func (g *dotGraph) writeGroup(w io.Writer, indent string, grp *dotGroupNode) {
	systems := map[string]bool{}
	for _, n := range grp.hosts {
		systems[g.p.Hosts[n].System] = true
	}
	sys := slices.Sorted(maps.Keys(systems))
	sysLine := "system " + sys[0]
	if len(sys) > 1 {
		sysLine = "systems " + strings.Join(sys, ", ")
	}
	fmt.Fprintf(w, "%s%s [label=%s, shape=folder, style=filled, fillcolor=\"#eeeeee\"];\n", indent, dotQuote(grp.id),
		dotLabel(fmt.Sprintf("%s ×%d", groupPattern(grp.hosts), len(grp.hosts)), sysLine))
}

func (g *dotGraph) writeEdges(w io.Writer) {
	p := g.p
	// What leaves the deploy host for store URLs.
	for _, t := range p.Transfers {
		if p.Hosts[t.To] == nil {
			fmt.Fprintf(w, "  %s -> %s [label=%s, penwidth=2];\n", dotQuote(dotDeploy), dotQuote(dotURL+t.To), dotLabel(g.moves(t.Paths)...))
		}
	}
	// Every host from its source: the deploy host (a push), a store
	// instance or a store URL (substitution); pushes are drawn heavier, as
	// they are what the deploy host's uplink carries.
	for _, n := range p.Order {
		if g.grouped[n] {
			continue
		}
		src := g.source[n]
		attrs := ""
		if src == dotDeploy {
			attrs = ", penwidth=2"
		}
		fmt.Fprintf(w, "  %s -> %s [label=%s%s];\n", dotQuote(src), dotQuote(dotHost+n), dotLabel(g.moves(p.Hosts[n].Paths)...), attrs)
	}
	for _, grp := range g.groups {
		attrs := ""
		if grp.source == dotDeploy {
			attrs = ", penwidth=2"
		}
		fmt.Fprintf(w, "  %s -> %s [label=%s%s];\n", dotQuote(grp.source), dotQuote(grp.id), dotLabel(g.groupMoves(grp)...), attrs)
	}
	// Jump hops: from the jump host to the hosts (or group) reached
	// through it, unlabelled (the graph's legend says what dashes are):
	// most often the jump host is also the store, and a label on every
	// second edge would crowd the graph. A hop that runs beside the
	// distribution edge, or from a jump host outside the plan (which has
	// no place in the tree), may place its ends; any other is
	// constraint=false, so that it does not reshape the distribution tree
	// the layout follows.
	jumpEdge := func(from, to, toSource string) {
		constraint := ""
		if p.Hosts[from] != nil && dotHost+from != toSource {
			constraint = ", constraint=false"
		}
		fmt.Fprintf(w, "  %s -> %s [style=dashed, color=\"#666666\", arrowhead=vee%s];\n",
			dotQuote(dotHost+from), dotQuote(to), constraint)
	}
	for _, n := range slices.Sorted(maps.Keys(g.jumps)) {
		if !g.grouped[n] {
			jumpEdge(g.jumps[n], dotHost+n, g.source[n])
		}
	}
	for _, grp := range g.groups {
		if grp.jump != "" {
			jumpEdge(grp.jump, grp.id, grp.source)
		}
	}
}

// moves describes closures moving along an edge: how many, and their size
// when known.
func (g *dotGraph) moves(paths []string) []string {
	lines := []string{quantity.Count(len(paths), "closure")}
	if n, ok := sizeOf(g.opts.Sizes, paths); ok {
		lines = append(lines, quantity.Bytes(n))
	}
	return lines
}

// groupMoves describes what each host of a group receives: the hosts may
// differ (several systems), so the count and size are ranges then.
func (g *dotGraph) groupMoves(grp *dotGroupNode) []string {
	minC, maxC := -1, 0
	var maxB uint64
	known := true
	for _, n := range grp.hosts {
		paths := g.p.Hosts[n].Paths
		if minC < 0 || len(paths) < minC {
			minC = len(paths)
		}
		maxC = max(maxC, len(paths))
		b, ok := sizeOf(g.opts.Sizes, paths)
		known = known && ok
		maxB = max(maxB, b)
	}
	count := quantity.Count(maxC, "closure") + " each"
	if minC != maxC {
		count = fmt.Sprintf("%d–%d closures each", minC, maxC)
	}
	lines := []string{fmt.Sprintf("%d hosts", len(grp.hosts)), count}
	if known {
		lines = append(lines, "up to "+quantity.Bytes(maxB)+" each")
	}
	return lines
}

// sizeOf asks s, which may be nil, for the size of paths' closures.
func sizeOf(s ClosureSizer, paths []string) (uint64, bool) {
	if s == nil {
		return 0, false
	}
	return s.ClosureSize(paths)
}

// groupPattern names a group's hosts as a glob: their common prefix, cut
// back to before a trailing number ("www-1", "www-12" -> "www-*").
func groupPattern(hosts []string) string {
	prefix := hosts[0]
	for _, h := range hosts[1:] {
		for !strings.HasPrefix(h, prefix) {
			prefix = prefix[:len(prefix)-1]
		}
	}
	prefix = strings.TrimRight(prefix, "0123456789")
	if prefix == "" {
		return "hosts"
	}
	return prefix + "*"
}

// dotQuote is s as a DOT quoted string.
func dotQuote(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`)
	return `"` + r.Replace(s) + `"`
}

// dotLabel is a label of several centred lines.
func dotLabel(lines ...string) string {
	q := make([]string, len(lines))
	for i, l := range lines {
		q[i] = strings.TrimSuffix(strings.TrimPrefix(dotQuote(l), `"`), `"`)
	}
	return `"` + strings.Join(q, `\n`) + `"`
}
