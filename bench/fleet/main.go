// Command fleet measures nix-hive on a fleet-sized lab with a tree of
// stores: this machine deploys to a region store, which feeds rack stores,
// which feed the consumers, each level reachable only through the one
// above it.
//
//	go run ./bench/fleet [-hosts 40] [-racks 4] [-payload-mib 1]
//
// See bench/README.md for what it runs and how to read the table.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/nix-hive/nix-hive/bench/internal/harness"
	"github.com/nix-hive/nix-hive/bench/internal/wire"
	"github.com/nix-hive/nix-hive/lab"
	"github.com/nix-hive/nix-hive/nixcmd"
	"github.com/nix-hive/nix-hive/state"
)

type options struct {
	hosts      int
	racks      int
	payloadMiB int
	parallel   int
	keep       bool
	verbose    bool
}

func main() {
	var o options
	flag.IntVar(&o.hosts, "hosts", 40, "consumers, spread evenly over the racks (rounded up to a multiple of -racks)")
	flag.IntVar(&o.racks, "racks", 4, "rack stores between the region store and the consumers")
	flag.IntVar(&o.payloadMiB, "payload-mib", 1, "MiB of payload in each test system")
	flag.IntVar(&o.parallel, "parallel", 32, "nix-hive deploy --parallel")
	flag.BoolVar(&o.keep, "keep", false, "keep the work directory (logs, hive) instead of removing it")
	flag.BoolVar(&o.verbose, "v", false, "copy every command's output to stderr")
	flag.Parse()
	harness.Main("bench/fleet", func(ctx context.Context) error { return run(ctx, o) })
}

const regionName = "region"

type bench struct {
	o       options
	perRack int
	lab     *lab.Lab
	work    string
	hive    string
	bin     string
	counter *wire.Table
	logs    *harness.Runner
	step    func(string)
	out     map[string]string // system name -> out path of the last build
}

// row is one measured command.
type row struct {
	what    string
	hosts   int // instances it covers
	wall    time.Duration
	up      uint64 // bytes sent to the region's sshd (IP level)
	closure uint64 // NAR size of the systems it deployed, 0 if none
	rssKiB  int64  // nix-hive's peak RSS
	err     error
}

func run(ctx context.Context, o options) (err error) {
	if o.hosts < 1 || o.racks < 1 || o.payloadMiB < 0 || o.parallel < 1 {
		return errors.New("need -hosts >= 1, -racks >= 1, -payload-mib >= 0, -parallel >= 1")
	}
	if err := harness.Check("nft"); err != nil {
		return err
	}
	root, err := harness.ModuleRoot(ctx)
	if err != nil {
		return err
	}
	b := &bench{o: o, perRack: (o.hosts + o.racks - 1) / o.racks, step: stepper(), out: map[string]string{}}
	cleanup, err := b.setup(ctx, root)
	defer func() { err = errors.Join(err, cleanup()) }()
	if err != nil {
		return err
	}
	rows := b.measureAll(ctx)
	b.report(os.Stdout, rows)
	var failed []string
	for _, r := range rows {
		if r.err != nil {
			failed = append(failed, r.what)
			fmt.Fprintf(os.Stderr, "%s FAILED: %v\n", r.what, r.err)
		}
	}
	if len(failed) > 0 {
		return fmt.Errorf("did not complete: %s (logs in %s; -keep keeps them)", strings.Join(failed, ", "), filepath.Join(b.work, "logs"))
	}
	return nil
}

// setup builds nix-hive, starts the lab, writes the hive and makes every
// host trust its key; cleanup undoes it, also after an error.
func (b *bench) setup(ctx context.Context, root string) (cleanup func() error, err error) {
	w, err := harness.NewWorkspace(ctx, "nix-hive-bench-fleet-", root, b.o.keep, b.o.verbose)
	cleanup = w.Cleanup
	if err != nil {
		return cleanup, err
	}
	b.work, b.logs, b.bin = w.Dir, w.Logs, w.Bin
	b.step("built nix-hive")
	start := time.Now()
	b.lab, err = lab.Start(ctx, lab.Config{Tree: &lab.TreeConfig{Racks: b.o.racks, PerRack: b.perRack, RegionName: regionName}})
	if err != nil {
		return cleanup, fmt.Errorf("start lab: %w", err)
	}
	w.OnCleanup(b.lab.Close)
	b.step(fmt.Sprintf("lab up: %s + %d racks + %d consumers, %d hosts in %.1fs",
		regionName, b.o.racks, b.o.racks*b.perRack, len(b.lab.Hosts), time.Since(start).Seconds()))
	if err := b.prepareHive(ctx, root); err != nil {
		return cleanup, err
	}
	b.step("hive and keys ready")
	addr, err := netip.ParseAddr(b.lab.Host(regionName).Addr)
	if err != nil {
		return cleanup, fmt.Errorf("region address: %w", err)
	}
	// Everything the deploy host sends to any host crosses the region's
	// sshd: the racks and consumers are reached through it.
	table := fmt.Sprintf("nix_hive_bench_fleet_%d", os.Getpid())
	if b.counter, err = wire.NewTable(ctx, table, []wire.Counter{{Name: "to_region", Rule: wire.ToSSH(addr)}}); err != nil {
		return cleanup, err
	}
	w.OnCleanup(b.counter.Delete)
	return cleanup, nil
}

// prepareHive writes the hive: the region runs "region", racks "rack" with
// the region as their store, consumers "web" with their rack (their jump
// host) as their store. version.nix is rewritten between deploys so each
// deploys new systems.
func (b *bench) prepareHive(ctx context.Context, root string) error {
	if err := harness.CopyTree(ctx, filepath.Join(root, "examples", "testsystems"), filepath.Join(b.work, "testsystems")); err != nil {
		return err
	}
	b.hive = filepath.Join(b.work, "hive")
	if err := os.MkdirAll(b.hive, 0o755); err != nil {
		return fmt.Errorf("hive dir: %w", err)
	}
	if err := os.WriteFile(filepath.Join(b.hive, "lab.nix"), []byte(b.lab.HiveNix()), 0o644); err != nil {
		return fmt.Errorf("write lab.nix: %w", err)
	}
	if err := os.WriteFile(filepath.Join(b.hive, "hive.nix"), []byte(hiveNix(b.o.payloadMiB)), 0o644); err != nil {
		return fmt.Errorf("write hive.nix: %w", err)
	}
	if err := b.setVersion("0"); err != nil {
		return err
	}
	out, err := b.logs.Run(ctx, "setup", nil, b.bin, "-c", b.hive, "keygen")
	if err != nil {
		return err
	}
	pub := strings.TrimSpace(string(out))
	if pub == "" || strings.ContainsAny(pub, "\n") {
		return fmt.Errorf("nix-hive keygen printed %q, want one public key", pub)
	}
	for _, h := range b.lab.Hosts {
		if err := h.WriteNixConf("trusted-public-keys = " + pub); err != nil {
			return err
		}
	}
	return nil
}

func (b *bench) setVersion(v string) error {
	p := filepath.Join(b.hive, "version.nix")
	if err := os.WriteFile(p, []byte(nixcmd.String("fleet-"+v)+"\n"), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", p, err)
	}
	return nil
}

func hiveNix(payloadMiB int) string {
	return fmt.Sprintf(`# Written by bench/fleet.
let
  testSystem = import ../testsystems;
  lab = import ./lab.nix;
  payloadMiB = %d;
  version = import ./version.nix;
  region = %s;
in
{
  signing.keyFile = "keys/hive.sec";
  systems.region.toplevel = testSystem { name = "region"; inherit version payloadMiB; };
  systems.rack.toplevel = testSystem { name = "rack"; inherit version payloadMiB; };
  systems.web.toplevel = testSystem { name = "web"; inherit version payloadMiB; };
  instances = builtins.mapAttrs (name: conn: conn // (
    if name == region then { system = "region"; }
    else if (conn.jump or "") == region then { system = "rack"; store = region; }
    else { system = "web"; store = conn.jump; })) lab;
}
`, payloadMiB, nixcmd.String(regionName))
}

// tenth names the region, the racks and the first tenth of each rack's
// consumers: a deploy to a tenth of the fleet through the whole tree.
func (b *bench) tenth() []string {
	names := []string{regionName}
	per := max(1, b.perRack/10)
	for k := 1; k <= b.o.racks; k++ {
		names = append(names, fmt.Sprintf("rack-%d", k))
		for i := 1; i <= min(per, b.perRack); i++ {
			names = append(names, fmt.Sprintf("node-%d-%d", k, i))
		}
	}
	return names
}

func (b *bench) measureAll(ctx context.Context) []*row {
	all := len(b.lab.Hosts)
	tenth := b.tenth()
	deploy := []string{"-c", b.hive, "deploy", "--parallel", fmt.Sprint(b.o.parallel)}
	var rows []*row
	add := func(r *row) {
		rows = append(rows, r)
		if r.err == nil {
			fmt.Fprintf(os.Stderr, "%s: %.1fs\n", r.what, r.wall.Seconds())
		}
	}
	// Each deploy gets systems of its own version, built beforehand: the
	// times are nix-hive's evaluation, transfers and activations.
	for _, p := range []struct {
		version, what string
		targets       []string
		hosts         int
	}{
		{"tenth", "deploy, a tenth", tenth, len(tenth)},
		{"all", "deploy, all", nil, all},
	} {
		if ctx.Err() != nil {
			return rows
		}
		r := &row{what: p.what, hosts: p.hosts}
		if r.err = b.setVersion(p.version); r.err == nil {
			r.closure, r.err = b.build(ctx, p.version)
		}
		if r.err == nil {
			b.measure(ctx, r, p.version, append(deploy, p.targets...)...)
		}
		add(r)
	}
	if rows[len(rows)-1].err == nil {
		if bad := harness.Wrong(b.lab, b.outPath); len(bad) > 0 {
			rows[len(rows)-1].err = fmt.Errorf("%d hosts do not run their system, e.g. %s", len(bad), bad[0])
		}
	}
	for _, c := range []struct {
		what string
		args []string
	}{
		{"no-op redeploy", deploy},
		{"status", []string{"-c", b.hive, "status"}},
		{"run '*' -- true", []string{"-c", b.hive, "run", "*", "--", "true"}},
	} {
		if ctx.Err() != nil {
			return rows
		}
		r := &row{what: c.what, hosts: all}
		b.measure(ctx, r, "all", c.args...)
		add(r)
	}
	return rows
}

func (b *bench) outPath(h *lab.Host) string {
	switch {
	case h.Name == regionName:
		return b.out["region"]
	case h.Jump == regionName:
		return b.out["rack"]
	}
	return b.out["web"]
}

// build builds (and signs) the hive's systems and returns the NAR size of
// their closures: the least a deploy must upload.
func (b *bench) build(ctx context.Context, version string) (uint64, error) {
	if _, err := b.logs.Run(ctx, "build-"+version, nil, b.bin, "-c", b.hive, "build"); err != nil {
		return 0, err
	}
	st, err := state.Load(filepath.Join(b.hive, "hive.state"))
	if err != nil {
		return 0, err
	}
	var paths []string
	for _, n := range []string{"region", "rack", "web"} {
		p := st.Systems[n].OutPath
		if p == "" {
			return 0, fmt.Errorf("nix-hive build recorded no output of system %s", n)
		}
		b.out[n] = p
		paths = append(paths, p)
	}
	out, err := b.logs.Run(ctx, "build-"+version, nil, "nix", append([]string{"path-info", "-r", "--json"}, paths...)...)
	if err != nil {
		return 0, err
	}
	infos, err := nixcmd.DecodePathInfo(out)
	if err != nil {
		return 0, err
	}
	var n uint64
	seen := map[string]bool{}
	for _, i := range infos {
		if !seen[i.Path] {
			seen[i.Path] = true
			n += i.NarSize
		}
	}
	return n, nil
}

// measure runs nix-hive between two readings of the byte counter.
func (b *bench) measure(ctx context.Context, r *row, logName string, args ...string) {
	c0, err := b.counter.Read(ctx)
	if err != nil {
		r.err = err
		return
	}
	start := time.Now()
	_, ps, err := b.logs.RunState(ctx, strings.NewReplacer(" ", "-", "'", "", "*", "").Replace(r.what), nil, b.bin, args...)
	r.wall = time.Since(start)
	if ps != nil {
		if ru, ok := ps.SysUsage().(*syscall.Rusage); ok {
			r.rssKiB = ru.Maxrss // Linux: KiB
		}
	}
	if err != nil {
		r.err = err
		return
	}
	c1, err := b.counter.Read(ctx)
	if err != nil {
		r.err = err
		return
	}
	r.up = wire.Sub(c1, c0)["to_region"].Bytes
}

func (b *bench) report(w *os.File, rows []*row) {
	fmt.Fprintf(w, "\nnix-hive fleet benchmark: %s -> %d racks -> %d consumers (%d hosts), %d MiB payload per system, deploy --parallel %d\n",
		regionName, b.o.racks, b.o.racks*b.perRack, len(b.lab.Hosts), b.o.payloadMiB, b.o.parallel)
	fmt.Fprintf(w, "times include nix-hive's evaluation; systems were built beforehand; MiB up = bytes this machine sent to the region's sshd (nft)\n\n")
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "command\thosts\twall s\tms/host\tMiB up\tclosure MiB\tup/closure\tpeak RSS MiB\t")
	for _, r := range rows {
		if r.err != nil {
			fmt.Fprintf(tw, "%s\t%d\tFAILED\t-\t-\t-\t-\t-\t\n", r.what, r.hosts)
			continue
		}
		closure, ratio := "-", "-"
		if r.closure > 0 {
			closure = harness.MiB(r.closure)
			ratio = fmt.Sprintf("%.2f", float64(r.up)/float64(r.closure))
		}
		fmt.Fprintf(tw, "%s\t%d\t%.1f\t%.0f\t%s\t%s\t%s\t%.0f\t\n", r.what, r.hosts, r.wall.Seconds(),
			float64(r.wall.Milliseconds())/float64(r.hosts), harness.MiB(r.up), closure, ratio, float64(r.rssKiB)/1024)
	}
	tw.Flush()
}

// stepper prints setup progress with the time each step took.
func stepper() func(string) {
	last := time.Now()
	return func(msg string) {
		fmt.Fprintf(os.Stderr, "%6.1fs %s\n", time.Since(last).Seconds(), msg)
		last = time.Now()
	}
}
