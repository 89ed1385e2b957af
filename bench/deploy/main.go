// Command deploy benchmarks `nix-hive deploy` against three hand-made ways
// of doing the same deploy, all in one run on one lab behind one shaped
// uplink: a naive loop, a parallel push to every host, and a hand-written
// script using the same store tree as nix-hive.
//
//	go run ./bench/deploy [-consumers 40] [-payload-mib 8] [-rate 100mbit] [-quick]
//
// See bench/README.md for what each case does and how to read the table.
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
	"text/tabwriter"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/nix-hive/nix-hive/bench/internal/harness"
	"github.com/nix-hive/nix-hive/bench/internal/wire"
	"github.com/nix-hive/nix-hive/lab"
	"github.com/nix-hive/nix-hive/nixcmd"
	"github.com/nix-hive/nix-hive/shell"
	"github.com/nix-hive/nix-hive/state"
)

type options struct {
	consumers  int
	payloadMiB int
	rate       string
	parallel   int
	cases      string
	keep       bool
	verbose    bool
}

func main() {
	var o options
	quick := flag.Bool("quick", false, "smoke run: 10 consumers (overrides -consumers)")
	flag.IntVar(&o.consumers, "consumers", 40, "internal hosts behind the jump host/store")
	flag.IntVar(&o.payloadMiB, "payload-mib", 8, "MiB of payload in each test system")
	flag.StringVar(&o.rate, "rate", "100mbit", "the deploy host's uplink rate (tc syntax)")
	flag.IntVar(&o.parallel, "parallel", 16, "hosts at once for nix-hive deploy --parallel and case (c)")
	flag.StringVar(&o.cases, "cases", "nix-hive,a,b,c", "cases to run, comma-separated")
	flag.BoolVar(&o.keep, "keep", false, "keep the work directory (logs, hive) instead of removing it")
	flag.BoolVar(&o.verbose, "v", false, "copy every command's output to stderr")
	flag.Parse()
	if *quick {
		o.consumers = 10
	}
	harness.Main("bench/deploy", func(ctx context.Context) error { return run(ctx, o) })
}

const jumpName = "portico"

// bench is one run: the lab, the files and the measuring instruments.
type bench struct {
	o       options
	lab     *lab.Lab
	work    string
	hive    string // the nix-hive case's hive directory
	bin     string // the nix-hive binary
	sshCfg  string // OpenSSH config the baselines use
	keySec  string // the hive's secret signing key
	uplink  string // root-namespace end of the veth to the jump host
	counter *wire.Table
	logs    *harness.Runner
	logDir  string
	step    func(string) // logs a step and the time it took
}

// systems is what one case deploys: store on the jump host, web on every
// consumer.
type systems struct{ store, web string }

func (s systems) of(h *lab.Host) string {
	if h.Name == jumpName {
		return s.store
	}
	return s.web
}

// result is one case's measurement; err set means it did not complete and
// its numbers mean nothing.
type result struct {
	name, what string
	wall       time.Duration
	vethBytes  uint64 // TX bytes of the uplink veth
	nftBytes   uint64 // bytes of packets to the jump host's sshd (IP level)
	closure    uint64 // NAR size of the union of the case's closures
	err        error
}

func run(ctx context.Context, o options) (err error) {
	if o.consumers < 1 || o.payloadMiB < 0 || o.parallel < 1 {
		return fmt.Errorf("need -consumers >= 1, -payload-mib >= 0, -parallel >= 1")
	}
	cases, err := parseCases(o.cases)
	if err != nil {
		return err
	}
	if err := harness.Check("tc", "nft", "ip"); err != nil {
		return err
	}
	root, err := harness.ModuleRoot(ctx)
	if err != nil {
		return err
	}
	b := &bench{o: o}
	cleanup, err := b.setup(ctx, root)
	defer func() { err = errors.Join(err, cleanup()) }()
	if err != nil {
		return err
	}
	sys, err := b.buildAll(ctx, cases)
	if err != nil {
		return err
	}
	warm, err := b.warmBuild(ctx)
	if err != nil {
		return err
	}
	b.step(fmt.Sprintf("systems built and signed (a warm `nix-hive build` takes %.2fs)", warm.Seconds()))
	undo, err := b.instrument(ctx)
	defer func() { err = errors.Join(err, undo()) }()
	if err != nil {
		return err
	}
	return b.measureAll(ctx, cases, sys)
}

// setup makes the work directory, builds nix-hive, starts the lab and
// writes the hive; cleanup undoes what was done, also after an error.
func (b *bench) setup(ctx context.Context, root string) (cleanup func() error, err error) {
	b.step = stepper()
	w, err := harness.NewWorkspace(ctx, "nix-hive-bench-deploy-", root, b.o.keep, b.o.verbose)
	cleanup = w.Cleanup
	if err != nil {
		return cleanup, err
	}
	b.work, b.logs, b.bin, b.logDir = w.Dir, w.Logs, w.Bin, w.Logs.Logs
	b.step("built nix-hive")
	if b.lab, err = lab.Start(ctx, lab.Config{Internal: b.o.consumers, JumpName: jumpName}); err != nil {
		return cleanup, fmt.Errorf("start lab: %w", err)
	}
	w.OnCleanup(b.lab.Close)
	b.step(fmt.Sprintf("lab up: %s + %d consumers", jumpName, b.o.consumers))
	if err := b.prepareHive(ctx, root); err != nil {
		return cleanup, err
	}
	b.step("hive, keys and ssh config ready")
	return cleanup, nil
}

// instrument counts the bytes sent to the jump host's sshd and shapes the
// deploy host's uplink; undo removes both.
func (b *bench) instrument(ctx context.Context) (undo func() error, err error) {
	undo = func() error { return nil }
	portico := b.lab.Host(jumpName)
	if b.uplink, err = wire.Uplink(ctx, portico.Addr); err != nil {
		return undo, fmt.Errorf("find the deploy host's uplink (the lab does not export its veth name): %w", err)
	}
	addr, err := netip.ParseAddr(portico.Addr)
	if err != nil {
		return undo, fmt.Errorf("jump host address %q: %w", portico.Addr, err)
	}
	table := fmt.Sprintf("nix_hive_bench_deploy_%d", os.Getpid())
	if b.counter, err = wire.NewTable(ctx, table, []wire.Counter{{Name: "to_jump", Rule: wire.ToSSH(addr)}}); err != nil {
		return undo, err
	}
	undo = b.counter.Delete
	unshape, err := wire.Shape(ctx, b.uplink, b.o.rate)
	if err != nil {
		return undo, err
	}
	undo = func() error {
		var uerr error
		if err := unshape(); err != nil {
			uerr = fmt.Errorf("remove tc qdisc from %s: %w", b.uplink, err)
		}
		return errors.Join(uerr, b.counter.Delete())
	}
	b.step(fmt.Sprintf("uplink %s shaped to %s; counting TX bytes and nft %s", b.uplink, b.o.rate, table))
	return undo, nil
}

// measureAll runs every case, prints the table and says which failed.
func (b *bench) measureAll(ctx context.Context, cases []string, sys map[string]systems) error {
	var results []*result
	for _, c := range cases {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		r := b.measure(ctx, c, sys[c])
		results = append(results, r)
		if r.err != nil {
			fmt.Fprintf(os.Stderr, "case %s FAILED: %v\n", c, r.err)
		} else {
			fmt.Fprintf(os.Stderr, "case %s: %.1fs, %s MiB uploaded\n", c, r.wall.Seconds(), harness.MiB(r.vethBytes))
		}
	}
	b.report(os.Stdout, results)
	var failed []string
	for _, r := range results {
		if r.err != nil {
			failed = append(failed, r.name)
		}
	}
	if len(failed) > 0 {
		return fmt.Errorf("cases did not complete: %s (logs in %s; -keep keeps them)", strings.Join(failed, ", "), b.logDir)
	}
	return nil
}

var caseInfo = map[string]string{
	"nix-hive": "nix-hive deploy: push once to the store, consumers substitute from it",
	"a":        "naive loop: nix copy + activate, one host after another",
	"b":        "parallel push from the deploy host to every host, then activate",
	"c":        "hand-written: nix copy to the store, consumers substitute in parallel",
}

func parseCases(s string) ([]string, error) {
	var out []string
	for _, c := range strings.Split(s, ",") {
		c = strings.TrimSpace(c)
		if _, ok := caseInfo[c]; !ok {
			return nil, fmt.Errorf("-cases: unknown case %q (have nix-hive, a, b, c)", c)
		}
		out = append(out, c)
	}
	return out, nil
}

// stepper prints setup progress with the time each step took.
func stepper() func(string) {
	last := time.Now()
	return func(msg string) {
		fmt.Fprintf(os.Stderr, "%6.1fs %s\n", time.Since(last).Seconds(), msg)
		last = time.Now()
	}
}

// prepareHive writes the hive (test systems, lab.nix, hive.nix, a signing
// key), makes every host trust the key as lib/module.nix would, and gets an
// OpenSSH config for the baselines.
func (b *bench) prepareHive(ctx context.Context, root string) error {
	var err error
	b.hive, err = harness.WriteHive(ctx, root, b.work, b.lab, hiveNix(b.o.payloadMiB), nil)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(b.work, "baselines.nix"), []byte(baselinesNix(b.o.payloadMiB)), 0o644); err != nil {
		return fmt.Errorf("write baselines.nix: %w", err)
	}
	if _, err := b.logs.KeygenTrusted(ctx, b.bin, b.hive, b.lab); err != nil {
		return err
	}
	b.keySec = filepath.Join(b.hive, "keys", "hive.sec")
	// The baselines reach hosts the way a user of nix-hive would by hand:
	// through the config nix-hive generates. The lab's own config is the
	// fallback while that command is missing.
	b.sshCfg = filepath.Join(b.work, "ssh_config")
	if out, err := b.logs.Run(ctx, "setup", nil, b.bin, "-c", b.hive, "ssh-config"); err == nil {
		err = os.WriteFile(b.sshCfg, out, 0o644)
		if err != nil {
			return fmt.Errorf("write %s: %w", b.sshCfg, err)
		}
	} else {
		fmt.Fprintf(os.Stderr, "nix-hive ssh-config failed, the baselines use the lab's ssh config: %v\n", err)
		b.sshCfg = b.lab.SSHConfigFile
	}
	// A broken config would fail case (a) only after minutes.
	last := b.lab.Hosts[len(b.lab.Hosts)-1].Name
	if _, err := b.logs.Run(ctx, "setup", nil, "ssh", "-F", b.sshCfg, "--", last, "true"); err != nil {
		return fmt.Errorf("the baselines' ssh config does not reach %s: %w", last, err)
	}
	return nil
}

// hiveNix is the nix-hive case's hive: the jump host runs "store" and is
// the store of the consumers, which run "web".
func hiveNix(payloadMiB int) string {
	return fmt.Sprintf(`# Written by bench/deploy.
let
  testSystem = import ../testsystems;
  lab = import ./lab.nix;
  payloadMiB = %d;
  version = "bench-nix-hive";
in
{
  signing.keyFile = "keys/hive.sec";
  systems.store.toplevel = testSystem { name = "store"; inherit version payloadMiB; };
  systems.web.toplevel = testSystem { name = "web"; inherit version payloadMiB; };
  instances = builtins.mapAttrs (name: conn: conn //
    (if name == %s then { system = "store"; } else { system = "web"; store = %s; })) lab;
}
`, payloadMiB, nixcmd.String(jumpName), nixcmd.String(jumpName))
}

// baselinesNix holds the baselines' systems: the same two as the hive's, in
// a different version per case, so no case finds another's paths on a host.
func baselinesNix(payloadMiB int) string {
	var s strings.Builder
	fmt.Fprintf(&s, "# Written by bench/deploy.\nlet testSystem = import ./testsystems; payloadMiB = %d; in\n{\n", payloadMiB)
	for _, c := range []string{"a", "b", "c"} {
		for _, n := range []string{"store", "web"} {
			fmt.Fprintf(&s, "  %s-%s = testSystem { name = %q; version = \"bench-%s\"; inherit payloadMiB; };\n", n, c, n, c)
		}
	}
	s.WriteString("}\n")
	return s.String()
}

// buildAll builds every case's systems (timing none of it) and signs the
// baselines' with the hive key, as nix-hive signs its own at build time.
func (b *bench) buildAll(ctx context.Context, cases []string) (map[string]systems, error) {
	if _, err := b.logs.Run(ctx, "build", nil, b.bin, "-c", b.hive, "build"); err != nil {
		return nil, err
	}
	st, err := state.Load(filepath.Join(b.hive, "hive.state"))
	if err != nil {
		return nil, err
	}
	sys := map[string]systems{"nix-hive": {store: st.Systems["store"].OutPath, web: st.Systems["web"].OutPath}}
	if sys["nix-hive"].store == "" || sys["nix-hive"].web == "" {
		return nil, fmt.Errorf("nix-hive build recorded no store/web outputs in %s", filepath.Join(b.hive, "hive.state"))
	}
	var toSign []string
	for _, c := range cases {
		if c == "nix-hive" {
			continue
		}
		var s systems
		for _, p := range []struct {
			attr string
			dst  *string
		}{{"store-" + c, &s.store}, {"web-" + c, &s.web}} {
			out, err := b.logs.Run(ctx, "build", nil, "nix-build", "--no-out-link", filepath.Join(b.work, "baselines.nix"), "-A", p.attr)
			if err != nil {
				return nil, err
			}
			*p.dst = strings.TrimSpace(string(out))
			if !strings.HasPrefix(*p.dst, "/nix/store/") || strings.Contains(*p.dst, "\n") {
				return nil, fmt.Errorf("nix-build -A %s printed %q, want one store path", p.attr, *p.dst)
			}
			toSign = append(toSign, *p.dst)
		}
		sys[c] = s
	}
	if len(toSign) > 0 {
		args := append([]string{"store", "sign", "-r", "-k", b.keySec}, toSign...)
		if _, err := b.logs.Run(ctx, "build", nil, "nix", args...); err != nil {
			return nil, err
		}
	}
	return sys, nil
}

// warmBuild times a `nix-hive build` whose systems are all built: the part
// of the nix-hive case's time that is evaluation and bookkeeping, not
// moving closures.
func (b *bench) warmBuild(ctx context.Context) (time.Duration, error) {
	start := time.Now()
	_, err := b.logs.Run(ctx, "build", nil, b.bin, "-c", b.hive, "build")
	return time.Since(start), err
}

// closureSize is the NAR size of the union of paths' closures: the least
// the deploy host must upload for a case.
func (b *bench) closureSize(ctx context.Context, paths ...string) (uint64, error) {
	out, err := b.logs.Run(ctx, "build", nil, "nix", append([]string{"path-info", "-r", "--json"}, paths...)...)
	if err != nil {
		return 0, err
	}
	infos, err := nixcmd.DecodePathInfo(out) // a list up to Nix 2.18, an object since
	if err != nil {
		return 0, err
	}
	seen := map[string]bool{}
	var n uint64
	for _, i := range infos {
		if !seen[i.Path] {
			seen[i.Path] = true
			n += i.NarSize
		}
	}
	return n, nil
}

// measure runs one case between two readings of the counters and checks
// that every host runs the case's system afterwards.
func (b *bench) measure(ctx context.Context, name string, s systems) *result {
	r := &result{name: name, what: caseInfo[name]}
	if r.closure, r.err = b.closureSize(ctx, s.store, s.web); r.err != nil {
		return r
	}
	tx0, err := wire.TxBytes(ctx, b.uplink)
	if err != nil {
		r.err = err
		return r
	}
	c0, err := b.counter.Read(ctx)
	if err != nil {
		r.err = err
		return r
	}
	fmt.Fprintf(os.Stderr, "case %s: %s\n", name, r.what)
	start := time.Now()
	switch name {
	case "nix-hive":
		_, err = b.logs.Run(ctx, name, nil, b.bin, "-c", b.hive, "deploy", "--parallel", fmt.Sprint(b.o.parallel))
	case "a":
		err = b.naive(ctx, s)
	case "b":
		err = b.pushAll(ctx, s)
	case "c":
		err = b.script(ctx, s)
	}
	r.wall = time.Since(start)
	if err != nil {
		r.err = err
		return r
	}
	tx1, err := wire.TxBytes(ctx, b.uplink)
	if err != nil {
		r.err = err
		return r
	}
	c1, err := b.counter.Read(ctx)
	if err != nil {
		r.err = err
		return r
	}
	r.vethBytes = tx1 - tx0
	r.nftBytes = wire.Sub(c1, c0)["to_jump"].Bytes
	if bad := harness.Wrong(b.lab, s.of); len(bad) > 0 {
		r.err = fmt.Errorf("%d hosts do not run the case's system: %s", len(bad), strings.Join(first(bad, 3), "; "))
	}
	return r
}

func first(s []string, n int) []string {
	if len(s) > n {
		return append(s[:n:n], fmt.Sprintf("and %d more", len(s)-n))
	}
	return s
}

// activate is what every baseline runs on a host to switch it to path,
// the same two steps nix-hive takes.
func activate(path string) string {
	return fmt.Sprintf("nix-env -p /nix/var/nix/profiles/system --set %s && %s switch",
		shell.Quote(path), shell.Quote(path+"/bin/switch-to-configuration"))
}

// nix runs nix with its ssh pointed at the baselines' config.
func (b *bench) nix(ctx context.Context, logName string, args ...string) error {
	r := *b.logs
	r.Env = harness.Env(b.sshCfg)
	_, err := r.Run(ctx, logName, nil, "nix", args...)
	return err
}

func (b *bench) ssh(ctx context.Context, logName, host, cmd string) error {
	_, err := b.logs.Run(ctx, logName, nil, "ssh", "-F", b.sshCfg, "--", host, cmd)
	return err
}

// naive is case (a): for each host in turn, nix copy then activate.
func (b *bench) naive(ctx context.Context, s systems) error {
	for _, h := range b.lab.Hosts {
		p := s.of(h)
		if err := b.nix(ctx, "a", "copy", "--to", "ssh://"+h.Name, p); err != nil {
			return fmt.Errorf("%s: %w", h.Name, err)
		}
		if err := b.ssh(ctx, "a", h.Name, activate(p)); err != nil {
			return fmt.Errorf("%s: %w", h.Name, err)
		}
	}
	return nil
}

// pushAll is case (b): nix copy from the deploy host to every host at
// once, then every activation at once.
func (b *bench) pushAll(ctx context.Context, s systems) error {
	g, gctx := errgroup.WithContext(ctx)
	for _, h := range b.lab.Hosts {
		g.Go(func() error {
			if err := b.nix(gctx, "b", "copy", "--to", "ssh://"+h.Name, s.of(h)); err != nil {
				return fmt.Errorf("%s: %w", h.Name, err)
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	g, gctx = errgroup.WithContext(ctx)
	for _, h := range b.lab.Hosts {
		g.Go(func() error {
			if err := b.ssh(gctx, "b", h.Name, activate(s.of(h))); err != nil {
				return fmt.Errorf("%s: %w", h.Name, err)
			}
			return nil
		})
	}
	return g.Wait()
}

// script is case (c): what a careful person would write by hand for
// nix-hive's tree. Both closures go to the jump host once; then, -parallel
// at a time, the jump host activates and each consumer substitutes from the
// jump host's internal address (signatures required) and activates.
func (b *bench) script(ctx context.Context, s systems) error {
	if err := b.nix(ctx, "c", "copy", "--to", "ssh://"+jumpName, s.store, s.web); err != nil {
		return fmt.Errorf("%s: %w", jumpName, err)
	}
	store := "ssh://root@" + b.lab.Host(jumpName).InternalAddr
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(b.o.parallel)
	for _, h := range b.lab.Hosts {
		cmd := activate(s.of(h))
		if h.Name != jumpName {
			cmd = fmt.Sprintf("nix-store --realise %s --option substituters %s --option require-sigs true >/dev/null && %s",
				shell.Quote(s.web), shell.Quote(store), cmd)
		}
		g.Go(func() error {
			if err := b.ssh(gctx, "c", h.Name, cmd); err != nil {
				return fmt.Errorf("%s: %w", h.Name, err)
			}
			return nil
		})
	}
	return g.Wait()
}

// goal is one ratio the issue sets a target for.
type goal struct {
	what   string
	target string
	value  float64
	ok     bool
	na     string // why there is no value
}

func (b *bench) goals(rs map[string]*result) []goal {
	get := func(n string) (*result, string) {
		r := rs[n]
		switch {
		case r == nil:
			return nil, "case " + n + " not run"
		case r.err != nil:
			return nil, "case " + n + " failed"
		}
		return r, ""
	}
	ratio := func(what, target, num, den string, f func(a, b *result) float64, ok func(float64) bool) goal {
		g := goal{what: what, target: target}
		a, why := get(num)
		if why == "" {
			var c *result
			if c, why = get(den); why == "" {
				g.value = f(a, c)
				g.ok = ok(g.value)
			}
		}
		g.na = why
		return g
	}
	secs := func(a, c *result) float64 { return a.wall.Seconds() / c.wall.Seconds() }
	return []goal{
		ratio("bytes(nix-hive) / closure size", "<= 1.2", "nix-hive", "nix-hive",
			func(a, _ *result) float64 { return float64(a.vethBytes) / float64(a.closure) },
			func(v float64) bool { return v <= 1.2 }),
		ratio("time(a) / time(nix-hive)", ">= 3", "a", "nix-hive", secs, func(v float64) bool { return v >= 3 }),
		ratio("time(b) / time(nix-hive)", "> 1", "b", "nix-hive", secs, func(v float64) bool { return v > 1 }),
		ratio("time(nix-hive) / time(c)", "<= 1.25", "nix-hive", "c", secs, func(v float64) bool { return v <= 1.25 }),
		// Issue 28 asks that safety cost nothing beside the hand-written
		// tree: its goal, next to the older bound of nix-hive's overhead.
		ratio("time(nix-hive) / time(c), issue 28", "<= 0.8", "nix-hive", "c", secs, func(v float64) bool { return v <= 0.8 }),
	}
}

func (b *bench) report(w *os.File, results []*result) {
	fmt.Fprintf(w, "\nnix-hive deploy benchmark: %s + %d consumers, %d MiB payload per system, uplink %s shaped to %s\n",
		jumpName, b.o.consumers, b.o.payloadMiB, b.uplink, b.o.rate)
	fmt.Fprintf(w, "store = %s, web = consumers; the nix-hive time includes its evaluation and a no-op build (systems built beforehand)\n\n", jumpName)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "case\twall s\tMiB up (veth)\tMiB up (nft)\tclosure MiB\tup/closure\tuplink Mbit/s\t")
	byName := map[string]*result{}
	for _, r := range results {
		byName[r.name] = r
		if r.err != nil {
			fmt.Fprintf(tw, "%s\tFAILED\t-\t-\t%s\t-\t-\t\n", r.name, harness.MiB(r.closure))
			continue
		}
		// The mean uplink rate shows the shaping held: no case beats -rate.
		fmt.Fprintf(tw, "%s\t%.1f\t%s\t%s\t%s\t%.2f\t%.1f\t\n", r.name, r.wall.Seconds(), harness.MiB(r.vethBytes),
			harness.MiB(r.nftBytes), harness.MiB(r.closure), float64(r.vethBytes)/float64(max(r.closure, 1)),
			float64(r.vethBytes)*8/r.wall.Seconds()/1e6)
	}
	tw.Flush()
	fmt.Fprintln(w)
	for _, r := range results {
		fmt.Fprintf(w, "  %-8s %s\n", r.name, r.what)
	}
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "goal\tvalue\ttarget\tmet")
	for _, g := range b.goals(byName) {
		if g.na != "" {
			fmt.Fprintf(tw, "%s\t-\t%s\tunknown (%s)\n", g.what, g.target, g.na)
			continue
		}
		met := "no"
		if g.ok {
			met = "yes"
		}
		fmt.Fprintf(tw, "%s\t%.2f\t%s\t%s\n", g.what, g.value, g.target, met)
	}
	tw.Flush()
}
