// Command run benchmarks `nix-hive run '*' -- true` against a shell loop of
// `ssh HOST true` over the same lab hosts in the same run, and counts the
// TCP connections nix-hive opens to each host.
//
//	go run ./bench/run [-hosts 50] [-runs 3]
//
// See bench/README.md for how to read the output.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nix-hive/nix-hive/bench/internal/harness"
	"github.com/nix-hive/nix-hive/bench/internal/wire"
	"github.com/nix-hive/nix-hive/lab"
	"github.com/nix-hive/nix-hive/shell"
)

type options struct {
	hosts   int
	runs    int
	keep    bool
	verbose bool
}

func main() {
	var o options
	flag.IntVar(&o.hosts, "hosts", 50, "lab hosts")
	flag.IntVar(&o.runs, "runs", 3, "measure each side this many times (alternating) and report the median")
	flag.BoolVar(&o.keep, "keep", false, "keep the work directory (logs, hive) instead of removing it")
	flag.BoolVar(&o.verbose, "v", false, "copy every command's output to stderr")
	flag.Parse()
	harness.Main("bench/run", func(ctx context.Context) error { return run(ctx, o) })
}

// sample is one timed run of one side, with the new connections each host
// saw during it.
type sample struct {
	wall  time.Duration
	conns map[string]uint64 // host name -> TCP connections opened to its sshd
}

func run(ctx context.Context, o options) (err error) {
	if o.hosts < 1 || o.runs < 1 {
		return fmt.Errorf("need -hosts >= 1 and -runs >= 1")
	}
	if err := harness.Check("nft", "sh"); err != nil {
		return err
	}
	root, err := harness.ModuleRoot(ctx)
	if err != nil {
		return err
	}
	work, err := os.MkdirTemp("", "nix-hive-bench-run-")
	if err != nil {
		return fmt.Errorf("work dir: %w", err)
	}
	if o.keep {
		defer fmt.Fprintf(os.Stderr, "work directory kept: %s\n", work)
	} else {
		defer os.RemoveAll(work)
	}
	m := &meter{logs: &harness.Runner{Logs: work, Env: harness.Env("")}}
	if o.verbose {
		m.logs.Echo = os.Stderr
	}
	bin := filepath.Join(work, "nix-hive")
	if err := harness.BuildNixHive(ctx, root, bin); err != nil {
		return err
	}
	start := time.Now()
	if m.lab, err = lab.Start(ctx, lab.Config{Hosts: o.hosts}); err != nil {
		return fmt.Errorf("start lab: %w", err)
	}
	defer func() { err = errors.Join(err, m.lab.Close()) }()
	fmt.Fprintf(os.Stderr, "lab of %d hosts up in %.1fs\n", o.hosts, time.Since(start).Seconds())
	hive, err := writeHive(ctx, root, work, m.lab)
	if err != nil {
		return err
	}
	if err := m.count(ctx); err != nil {
		return err
	}
	defer func() { err = errors.Join(err, m.table.Delete()) }()
	return m.compare(ctx, o, bin, hive)
}

// meter runs commands against the lab and counts the SSH connections
// each opens to every host.
type meter struct {
	lab   *lab.Lab
	logs  *harness.Runner
	table *wire.Table
}

// count sets up an nft counter of new SSH connections per host.
func (m *meter) count(ctx context.Context) error {
	var counters []wire.Counter
	for i, h := range m.lab.Hosts {
		a, err := netip.ParseAddr(h.Addr)
		if err != nil {
			return fmt.Errorf("host %s address %q: %w", h.Name, h.Addr, err)
		}
		counters = append(counters, wire.Counter{Name: fmt.Sprintf("h%d", i), Rule: wire.NewSSHConns(a)})
	}
	var err error
	m.table, err = wire.NewTable(ctx, fmt.Sprintf("nix_hive_bench_run_%d", os.Getpid()), counters)
	return err
}

// measure runs a command and returns its wall time and the connections
// it opened to each host.
func (m *meter) measure(ctx context.Context, logName, name string, args ...string) (sample, error) {
	c0, err := m.table.Read(ctx)
	if err != nil {
		return sample{}, err
	}
	t0 := time.Now()
	_, err = m.logs.Run(ctx, logName, nil, name, args...)
	wall := time.Since(t0)
	if err != nil {
		return sample{}, err
	}
	c1, err := m.table.Read(ctx)
	if err != nil {
		return sample{}, err
	}
	d := wire.Sub(c1, c0)
	s := sample{wall: wall, conns: map[string]uint64{}}
	for i, h := range m.lab.Hosts {
		s.conns[h.Name] = d[fmt.Sprintf("h%d", i)].Packets
	}
	return s, nil
}

// compare runs nix-hive run and the ssh loop a user would type, in turns,
// and reports.
func (m *meter) compare(ctx context.Context, o options, bin, hive string) error {
	var names []string
	for _, h := range m.lab.Hosts {
		names = append(names, h.Name)
	}
	// Names and the config path are quoted although the lab's are plain,
	// since this string goes to a shell.
	loop := fmt.Sprintf(`for h in %s; do ssh -F %s "$h" true || exit 1; done`,
		shell.QuoteArgs(names), shell.Quote(m.lab.SSHConfigFile))
	var hiveRuns, loopRuns []sample
	for i := 0; i < o.runs; i++ {
		// Alternate, so a slow phase of the machine hits both sides.
		s, err := m.measure(ctx, "loop", "sh", "-c", loop)
		if err != nil {
			return fmt.Errorf("ssh loop: %w", err)
		}
		loopRuns = append(loopRuns, s)
		if s, err = m.measure(ctx, "nix-hive", bin, "-c", hive, "run", "*", "--", "true"); err != nil {
			return fmt.Errorf("nix-hive run: %w", err)
		}
		hiveRuns = append(hiveRuns, s)
		fmt.Fprintf(os.Stderr, "run %d: ssh loop %.2fs, nix-hive run %.2fs\n", i+1, loopRuns[i].wall.Seconds(), hiveRuns[i].wall.Seconds())
	}
	report(o, names, hiveRuns, loopRuns)
	return nil
}

// writeHive writes a hive of the lab's hosts. run never builds, but every
// instance needs a system, so they share one that is never built.
func writeHive(ctx context.Context, root, work string, l *lab.Lab) (string, error) {
	return harness.WriteHive(ctx, root, work, l, `# Written by bench/run.
{
  systems.idle.toplevel = import ../testsystems { name = "idle"; };
  instances = builtins.mapAttrs (name: conn: conn // { system = "idle"; }) (import ./lab.nix);
}
`, nil)
}

func median(samples []sample) time.Duration {
	ds := make([]time.Duration, len(samples))
	for i, s := range samples {
		ds[i] = s.wall
	}
	slices.Sort(ds)
	return ds[len(ds)/2]
}

// connSummary says how many hosts saw how many connections, e.g.
// "50 hosts: 1" or "48 hosts: 1, 2 hosts: 2 (host-7 host-9)".
func connSummary(names []string, runs []sample) (summary string, allOne bool) {
	allOne = true
	var parts []string
	for i, s := range runs {
		hist := map[uint64][]string{}
		for _, n := range names {
			hist[s.conns[n]] = append(hist[s.conns[n]], n)
		}
		var keys []uint64
		for k := range hist {
			keys = append(keys, k)
			if k != 1 {
				allOne = false
			}
		}
		slices.Sort(keys)
		var p []string
		for _, k := range keys {
			entry := fmt.Sprintf("%d hosts: %d", len(hist[k]), k)
			if k != 1 && len(hist[k]) <= 5 {
				entry += " (" + strings.Join(hist[k], " ") + ")"
			}
			p = append(p, entry)
		}
		parts = append(parts, fmt.Sprintf("run %d: %s", i+1, strings.Join(p, ", ")))
	}
	return strings.Join(parts, "; "), allOne
}

func report(o options, names []string, hiveRuns, loopRuns []sample) {
	h, l := median(hiveRuns), median(loopRuns)
	w := os.Stdout
	fmt.Fprintf(w, "\nnix-hive run benchmark: %d lab hosts, `true` on each, median of %d runs\n\n", o.hosts, o.runs)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "side\tmedian s\truns s")
	runs := func(ss []sample) string {
		var p []string
		for _, s := range ss {
			p = append(p, fmt.Sprintf("%.2f", s.wall.Seconds()))
		}
		return strings.Join(p, " ")
	}
	fmt.Fprintf(tw, "nix-hive run '*' -- true\t%.2f\t%s\n", h.Seconds(), runs(hiveRuns))
	fmt.Fprintf(tw, "for h ...; ssh -F lab-config $h true\t%.2f\t%s\n", l.Seconds(), runs(loopRuns))
	tw.Flush()
	fmt.Fprintln(w)
	hc, hOne := connSummary(names, hiveRuns)
	lc, _ := connSummary(names, loopRuns)
	fmt.Fprintf(w, "TCP connections per host (SYNs to port 22, nft):\n  nix-hive run: %s\n  ssh loop:     %s\n\n", hc, lc)
	ratio := l.Seconds() / h.Seconds()
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "goal\tvalue\ttarget\tmet")
	fmt.Fprintf(tw, "time(ssh loop) / time(nix-hive run)\t%.1f\t>= 10\t%s\n", ratio, yes(ratio >= 10))
	fmt.Fprintf(tw, "TCP connections per host by nix-hive run\t%s\t1\t%s\n", connRange(names, hiveRuns), yes(hOne))
	tw.Flush()
}

// connRange is the least and most connections any host saw in any run.
func connRange(names []string, runs []sample) string {
	lo, hi := ^uint64(0), uint64(0)
	for _, s := range runs {
		for _, n := range names {
			lo, hi = min(lo, s.conns[n]), max(hi, s.conns[n])
		}
	}
	if lo == hi {
		return fmt.Sprint(lo)
	}
	return fmt.Sprintf("%d-%d", lo, hi)
}

func yes(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}
