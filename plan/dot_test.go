package plan

import (
	"bytes"
	"encoding/xml"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"testing"

	"github.com/nix-hive/nix-hive/eval"
	"github.com/nix-hive/nix-hive/internal/testenv"
	"github.com/nix-hive/nix-hive/nixcmd"
)

// dotInventory is the seed topology with its jump host (portico is the
// jump and store of www-1..3), cdn hosts on a binary cache, db-1 behind a
// bastion that is no part of any plan (itself behind gw), app-1 using
// portico as its store but storage as its jump, and web-1..120
// substituting from portico through it.
func dotInventory() *eval.Inventory {
	in := func(name, system, store, jump string) *eval.Instance {
		return &eval.Instance{Name: name, System: system, Store: store, Jump: jump, User: "root", Port: 22, Host: name}
	}
	inv := &eval.Inventory{Instances: map[string]*eval.Instance{
		"portico": in("portico", "portico", "", ""),
		"storage": in("storage", "storage", "", ""),
		"www-1":   in("www-1", "www", "portico", "portico"),
		"www-2":   in("www-2", "www", "portico", "portico"),
		"www-3":   in("www-3", "www", "portico", "portico"),
		"cdn-1":   in("cdn-1", "www", `https://cache.example/"q"`, ""),
		"cdn-2":   in("cdn-2", "www", `https://cache.example/"q"`, ""),
		"gw":      in("gw", "storage", "", ""),
		"bastion": in("bastion", "storage", "", "gw"),
		"db-1":    in("db-1", "storage", "", "bastion"),
		"app-1":   in("app-1", "www", "portico", "storage"),
	}}
	for i := 1; i <= 120; i++ {
		n := fmt.Sprintf("web-%d", i)
		sys := "www"
		if i > 110 {
			sys = "portico" // a group of two systems
		}
		inv.Instances[n] = in(n, sys, "portico", "portico")
	}
	return inv
}

// fakeSizes: every system closure is its own path only, of the size given.
type fakeSizes map[string]uint64

func (f fakeSizes) ClosureSize(paths []string) (uint64, bool) {
	var n uint64
	for _, p := range paths {
		s, ok := f[p]
		if !ok {
			return 0, false
		}
		n += s
	}
	return n, true
}

func webHosts(from, to int) []string {
	var out []string
	for i := from; i <= to; i++ {
		out = append(out, fmt.Sprintf("web-%d", i))
	}
	return out
}

// fleetInventory is 2,000 web hosts behind four stores, each store their
// jump host too.
func fleetInventory() *eval.Inventory {
	inv := &eval.Inventory{Instances: map[string]*eval.Instance{}}
	for i := 1; i <= 4; i++ {
		n := fmt.Sprintf("store-%d", i)
		inv.Instances[n] = &eval.Instance{Name: n, System: "storage", Host: n}
	}
	for i := 1; i <= 2000; i++ {
		n, s := fmt.Sprintf("www-%04d", i), fmt.Sprintf("store-%d", i%4+1)
		inv.Instances[n] = &eval.Instance{Name: n, System: "www", Host: n, Store: s, Jump: s}
	}
	return inv
}

// fleetWaves is a canary, then 499, 500 and 1,000 hosts; the stores,
// put last, are moved into the wave of their first consumer.
func fleetWaves() (targets []string, waves [][]string) {
	waves = make([][]string, 4)
	for i := 1; i <= 2000; i++ {
		n := fmt.Sprintf("www-%04d", i)
		targets = append(targets, n)
		w := 3
		switch {
		case i == 1:
			w = 0
		case i <= 500:
			w = 1
		case i <= 1000:
			w = 2
		}
		waves[w] = append(waves[w], n)
	}
	for i := 1; i <= 4; i++ {
		targets = append(targets, fmt.Sprintf("store-%d", i))
		waves[3] = append(waves[3], fmt.Sprintf("store-%d", i))
	}
	return targets, waves
}

type dotCase struct {
	name     string
	inv      *eval.Inventory // nil: dotInventory()
	maxNodes int             // when set, at most this many node statements
	targets  []string
	waves    [][]string
	opts     DotOptions
	want     []string // lines (trimmed) the graph must have
	notWant  []string // substrings it must not have
}

func dotCases() []dotCase {
	seed := []string{"portico", "storage", "www-1", "www-2", "www-3"}
	return []dotCase{
		{
			name:    "seed: pushes to portico and storage, www substitutes from portico, jumps dashed",
			targets: seed,
			opts:    DotOptions{Inventory: dotInventory()},
			want: []string{
				`digraph plan {`,
				`"deploy" [label="deploy host\n(this machine)", shape=box, style="filled,bold", fillcolor="#dbe9f6"];`,
				`subgraph "cluster_wave_1" {`,
				`label="wave 1 (5 hosts)";`,
				`"h:portico" [label="portico\nsystem portico\nstore for 3 hosts", style="rounded,filled", fillcolor="#fff3c4"];`,
				`"h:www-1" [label="www-1\nsystem www", style="rounded"];`,
				`"deploy" -> "h:portico" [label="2 closures", penwidth=2];`,
				`"deploy" -> "h:storage" [label="1 closure", penwidth=2];`,
				`"h:portico" -> "h:www-2" [label="1 closure"];`,
				`"h:portico" -> "h:www-3" [style=dashed, color="#666666", arrowhead=vee];`,
			},
			notWant: []string{"GiB", "KiB", "\"g:", "-> \"h:storage\" [style=dashed"},
		},
		{
			name:    "sizes label the edges when known",
			targets: seed,
			opts:    DotOptions{Sizes: fakeSizes{"/nix/store/p": 1 << 20, "/nix/store/w": 3 << 29, "/nix/store/s": 512}},
			want: []string{
				`"deploy" -> "h:portico" [label="2 closures\n1.5 GiB", penwidth=2];`,
				`"deploy" -> "h:storage" [label="1 closure\n512 B", penwidth=2];`,
				`"h:portico" -> "h:www-1" [label="1 closure\n1.5 GiB"];`,
			},
			notWant: []string{"dashed: ssh jump hop", "arrowhead=vee"}, // no inventory, no jumps
		},
		{
			name:    "unknown sizes are left out, not shown as zero",
			targets: seed,
			opts:    DotOptions{Sizes: fakeSizes{"/nix/store/p": 1}},
			want:    []string{`"deploy" -> "h:portico" [label="2 closures", penwidth=2];`},
			notWant: []string{" B\""},
		},
		{
			name:    "binary cache: one push to the URL, hosts substitute from it; the URL is quoted",
			targets: []string{"cdn-1", "cdn-2"},
			opts:    DotOptions{Inventory: dotInventory()},
			want: []string{
				`"u:https://cache.example/\"q\"" [label="https://cache.example/\"q\"\nbinary cache", shape=cylinder, style=filled, fillcolor="#fff3c4"];`,
				`"deploy" -> "u:https://cache.example/\"q\"" [label="1 closure", penwidth=2];`,
				`"u:https://cache.example/\"q\"" -> "h:cdn-1" [label="1 closure"];`,
			},
		},
		{
			name:    "a store that is no target is drawn outside the waves, dashed",
			targets: []string{"www-1"},
			opts:    DotOptions{Inventory: dotInventory()},
			want: []string{
				`"h:portico" [label="portico\nstore only\nstore for 1 host", style="rounded,dashed,filled", fillcolor="#fff3c4"];`,
				`label="wave 1 (1 host)";`,
				`"h:portico" -> "h:www-1" [style=dashed, color="#666666", arrowhead=vee];`,
			},
		},
		{
			name:    "waves are clusters numbered from 1; the title says where they come from",
			targets: []string{"www-1", "www-2", "portico"},
			waves:   [][]string{{"www-1"}, {"www-2", "portico"}},
			opts:    DotOptions{Title: "waves from hive.star"},
			want: []string{
				`label="waves from hive.star\nbold: pushed from this machine, solid: substituted from a store";`,
				`subgraph "cluster_wave_1" {`,
				`label="wave 1 (2 hosts)";`,
				`subgraph "cluster_wave_2" {`,
				`label="wave 2 (1 host)";`,
			},
			notWant: []string{"cluster_wave_0", "cluster_wave_3"},
		},
		{
			name:    "jump hosts outside the plan are drawn, the whole chain",
			targets: []string{"db-1"},
			opts:    DotOptions{Inventory: dotInventory()},
			want: []string{
				`"h:bastion" [label="bastion\njump host only", style="rounded,dotted"];`,
				`"h:gw" [label="gw\njump host only", style="rounded,dotted"];`,
				`"h:bastion" -> "h:db-1" [style=dashed, color="#666666", arrowhead=vee];`,
				`"h:gw" -> "h:bastion" [style=dashed, color="#666666", arrowhead=vee];`,
				`"deploy" -> "h:db-1" [label="1 closure", penwidth=2];`,
			},
			notWant: []string{`"deploy" -> "h:bastion"`},
		},
		{
			name:    "a jump host that is not the store: its hop does not shape the tree",
			targets: []string{"app-1", "storage"},
			opts:    DotOptions{Inventory: dotInventory()},
			want: []string{
				`"h:storage" -> "h:app-1" [style=dashed, color="#666666", arrowhead=vee, constraint=false];`,
				`"h:portico" -> "h:app-1" [label="1 closure"];`,
				`label="bold: pushed from this machine, solid: substituted from a store, dashed: ssh jump hop";`,
			},
		},
		{
			name:    "more consumers than the threshold: one node per store and wave",
			targets: append([]string{"portico"}, webHosts(1, 120)...),
			waves:   [][]string{append([]string{"portico"}, webHosts(1, 60)...), webHosts(61, 120)},
			opts:    DotOptions{Inventory: dotInventory(), Sizes: fakeSizes{"/nix/store/w": 2048, "/nix/store/p": 4096}},
			want: []string{
				`"g:h:portico|1|portico" [label="web-* ×60\nsystem www", shape=folder, style=filled, fillcolor="#eeeeee"];`,
				`"g:h:portico|2|portico" [label="web-* ×60\nsystems portico, www", shape=folder, style=filled, fillcolor="#eeeeee"];`,
				`"h:portico" -> "g:h:portico|1|portico" [label="60 hosts\n1 closure each\nup to 2.0 KiB each"];`,
				`"h:portico" -> "g:h:portico|2|portico" [label="60 hosts\n1 closure each\nup to 4.0 KiB each"];`,
				`"h:portico" -> "g:h:portico|2|portico" [style=dashed, color="#666666", arrowhead=vee];`,
				`"h:portico" [label="portico\nsystem portico\nstore for 120 hosts", style="rounded,filled", fillcolor="#fff3c4"];`,
				`label="wave 2 (60 hosts)";`,
			},
			notWant: []string{`"h:web-1"`, `"h:web-120"`},
		},
		func() dotCase {
			targets, waves := fleetWaves()
			return dotCase{
				name: "2,000 hosts behind four stores stay a readable graph", inv: fleetInventory(),
				targets: targets, waves: waves, maxNodes: 25, opts: DotOptions{Inventory: fleetInventory()},
				want: []string{
					`"h:www-0001" [label="www-0001\nsystem www", style="rounded"];`, // the canary, alone in its wave
					`"g:h:store-1|4|store-1" [label="www-* ×250\nsystem www", shape=folder, style=filled, fillcolor="#eeeeee"];`,
					`"h:store-3" -> "g:h:store-3|2|store-3" [label="125 hosts\n1 closure each"];`,
					`"h:store-3" -> "g:h:store-3|2|store-3" [style=dashed, color="#666666", arrowhead=vee];`,
					// store-2 serves the canary, the other stores' first
					// consumers are in wave 2.
					`label="wave 1 (2 hosts)";`,
					`label="wave 2 (502 hosts)";`,
					`label="wave 4 (1000 hosts)";`,
				},
				notWant: []string{`"h:www-0002"`, `"h:www-2000"`},
			}
		}(),
		{
			name:    "a lower threshold collapses the seed's three",
			targets: seed,
			opts:    DotOptions{Inventory: dotInventory(), Collapse: 2},
			want: []string{
				`"g:h:portico|1|portico" [label="www-* ×3\nsystem www", shape=folder, style=filled, fillcolor="#eeeeee"];`,
				`"deploy" -> "h:storage" [label="1 closure", penwidth=2];`, // two pushes: at the threshold
			},
			notWant: []string{`"h:www-1"`},
		},
		{
			name:    "a negative threshold draws every host",
			targets: append([]string{"portico"}, webHosts(1, 120)...),
			opts:    DotOptions{Inventory: dotInventory(), Collapse: -1},
			want:    []string{`"h:web-120" [label="web-120\nsystem portico", style="rounded"];`},
			notWant: []string{`"g:`},
		},
	}
}

func writeDotCase(t *testing.T, tc dotCase) string {
	t.Helper()
	built := map[string]eval.Built{"portico": {OutPath: "/nix/store/p"}, "storage": {OutPath: "/nix/store/s"}, "www": {OutPath: "/nix/store/w"}}
	inv := tc.inv
	if inv == nil {
		inv = dotInventory()
	}
	p, err := Make(inv, tc.targets, built, tc.waves)
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if err := p.WriteDot(&b, tc.opts); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

func TestWriteDot(t *testing.T) {
	for _, tc := range dotCases() {
		t.Run(tc.name, func(t *testing.T) {
			out := writeDotCase(t, tc)
			lines := map[string]bool{}
			for _, l := range strings.Split(out, "\n") {
				lines[strings.TrimSpace(l)] = true
			}
			for _, w := range tc.want {
				if !lines[w] {
					t.Errorf("no line\n\t%s\nin\n%s", w, out)
				}
			}
			for _, nw := range tc.notWant {
				if strings.Contains(out, nw) {
					t.Errorf("has %q:\n%s", nw, out)
				}
			}
			if nodes := strings.Count(out, "[label=") - strings.Count(out, "->"); tc.maxNodes > 0 && nodes > tc.maxNodes {
				t.Errorf("%d nodes, want at most %d:\n%s", nodes, tc.maxNodes, out)
			}
			if !strings.HasSuffix(out, "}\n") {
				t.Errorf("graph not closed:\n%s", out)
			}
			// Rendering the same plan twice gives the same graph: the
			// plan holds maps, the graph must not depend on their order.
			if again := writeDotCase(t, tc); again != out {
				t.Errorf("not deterministic:\n%s\n---\n%s", out, again)
			}
		})
	}
}

// TestWriteDotGraphviz gives every case to Graphviz's dot: each must be a
// graph it draws, without warnings, into well-formed SVG.
func TestWriteDotGraphviz(t *testing.T) {
	dot := testenv.Tool(t, "dot", "apt-get install graphviz")
	for _, tc := range dotCases() {
		t.Run(tc.name, func(t *testing.T) {
			var out, stderr bytes.Buffer
			cmd := exec.Command(dot, "-Tsvg")
			cmd.Stdin, cmd.Stdout, cmd.Stderr = strings.NewReader(writeDotCase(t, tc)), &out, &stderr
			if err := cmd.Run(); err != nil {
				t.Fatalf("dot -Tsvg: %v\n%s", err, stderr.String())
			}
			if stderr.Len() > 0 {
				t.Errorf("dot warns:\n%s", stderr.String())
			}
			d := xml.NewDecoder(&out)
			for {
				if _, err := d.Token(); err == io.EOF {
					break
				} else if err != nil {
					t.Fatalf("SVG is not well-formed XML: %v", err)
				}
			}
		})
	}
}

// TestSizesUnion: paths shared by two closures count once, and a path the
// store did not describe makes the size unknown.
func TestSizesUnion(t *testing.T) {
	s := &Sizes{infos: map[string]nixcmd.PathInfo{
		"/a":     {Path: "/a", NarSize: 10, References: []string{"/a", "/glibc"}},
		"/b":     {Path: "/b", NarSize: 20, References: []string{"/glibc"}},
		"/glibc": {Path: "/glibc", NarSize: 100},
	}}
	if n, ok := s.ClosureSize([]string{"/a", "/b"}); !ok || n != 130 {
		t.Errorf("a+b = %d, %v; want 130", n, ok)
	}
	if _, ok := s.ClosureSize([]string{"/a", "/missing"}); ok {
		t.Error("size of an undescribed path is known")
	}
	if _, ok := (*Sizes)(nil).ClosureSize([]string{"/a"}); ok {
		t.Error("nil Sizes knows a size")
	}
	p := &Plan{Transfers: []Transfer{{To: "x", Paths: []string{"/a"}}, {To: "y", Paths: []string{"/a", "/b"}}}}
	if n, ok := p.BytesOut(s); !ok || n != 110+130 {
		t.Errorf("BytesOut = %d, %v; want 240 (each destination gets its closure)", n, ok)
	}
}
