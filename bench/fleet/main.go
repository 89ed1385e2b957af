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
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/nix-hive/nix-hive/bench/internal/harness"
	"github.com/nix-hive/nix-hive/bench/internal/wire"
	"github.com/nix-hive/nix-hive/lab"
	"github.com/nix-hive/nix-hive/nixcmd"
	"github.com/nix-hive/nix-hive/state"
	"golang.org/x/sys/unix"
)

type options struct {
	hosts      int
	racks      int
	payloadMiB int
	parallel   int
	baselines  string
	keep       bool
	verbose    bool
	rollback   bool
}

func main() {
	var o options
	flag.IntVar(&o.hosts, "hosts", 40, "consumers, spread evenly over the racks (rounded up to a multiple of -racks)")
	flag.IntVar(&o.racks, "racks", 4, "rack stores between the region store and the consumers")
	flag.IntVar(&o.payloadMiB, "payload-mib", 1, "MiB of payload in each test system")
	flag.IntVar(&o.parallel, "parallel", 0, "nix-hive deploy --parallel and the script's concurrency (default: nix-hive's own choice, 8 per store)")
	flag.StringVar(&o.baselines, "baselines", "all", "the hand-written script's runs: all (a tenth and the whole fleet), tenth, or none")
	flag.BoolVar(&o.keep, "keep", false, "keep the work directory (logs, hive) instead of removing it")
	flag.BoolVar(&o.verbose, "v", false, "copy every command's output to stderr")
	flag.BoolVar(&o.rollback, "rollback", true, "end with another deploy of all and rollback '*' (about as long as two deploys of all)")
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
	side    *hostSide // nil when this machine has no cgroup CPU accounting
	sshCfg  string    // nix-hive ssh-config's output, for the script
	logs    *harness.Runner
	step    func(string)
	out     map[string]string // system name -> out path of the last build
	acct    *accounting       // the per-host readings' setup
}

// row is one measured command.
type row struct {
	what     string
	hosts    int // instances it covers
	deploy   bool
	script   bool // the baseline, not nix-hive
	floor    bool // connections alone, in this process (measureFloor)
	held     bool // a status --watch round, in this process (measureHeld)
	mux      bool // through the connection holder that "mux start" started
	wall     time.Duration
	up       uint64    // bytes sent to the region's sshd (IP level)
	down     uint64    // bytes the region's sshd sent back
	packets  [2]uint64 // IP packets up and down
	closure  uint64    // NAR size of the systems it deployed, 0 if none
	tcpConns int       // TCP connections opened to the region
	sshConns int       // SSH connections nix-hive made (its -v count)
	sessions int
	rssKiB   int64         // nix-hive's peak RSS
	fds      int           // nix-hive's peak open files
	cpu      float64       // CPU seconds the whole machine spent
	ownCPU   time.Duration // of that, nix-hive's and its children's (this process's, for floor and held)
	// sideCPU is what every process this machine started for the row
	// used, the lab's hosts aside (see hostSide): for the script its ssh
	// clients, their ControlMasters and nix copy; for nix-hive itself and
	// what it ran. Valid when sideKnown.
	sideCPU   time.Duration
	sideKnown bool
	acct      *account // per host, for the rows accounted()
	err       error
}

func run(ctx context.Context, o options) (err error) {
	if o.hosts < 1 || o.racks < 1 || o.payloadMiB < 0 || o.parallel < 0 {
		return errors.New("need -hosts >= 1, -racks >= 1, -payload-mib >= 0, -parallel >= 0")
	}
	if !slices.Contains([]string{"all", "tenth", "none"}, o.baselines) {
		return fmt.Errorf("-baselines %q: want all, tenth or none", o.baselines)
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
	if b.counter, err = wire.NewTable(ctx, table, []wire.Counter{
		{Name: "to_region", Rule: wire.ToSSH(addr)}, {Name: "from_region", Rule: wire.FromSSH(addr)},
		{Name: "new_conns", Rule: wire.NewSSHConns(addr)}}); err != nil {
		return cleanup, err
	}
	w.OnCleanup(b.counter.Delete)
	if b.side, err = newHostSide(); err != nil {
		fmt.Fprintf(os.Stderr, "bench/fleet: the deploy host's own CPU is not measured: %v\n", err)
	} else {
		w.OnCleanup(b.side.close)
	}
	return cleanup, b.setupAccounting(ctx)
}

// prepareHive writes the hive: the region runs "region", racks "rack" with
// the region as their store, consumers "web" with their rack (their jump
// host) as their store. version.nix is rewritten between deploys so each
// deploys new systems.
func (b *bench) prepareHive(ctx context.Context, root string) error {
	var err error
	if b.hive, err = harness.WriteHive(ctx, root, b.work, b.lab, hiveNix(b.o.payloadMiB), nil); err != nil {
		return err
	}
	if err := b.setVersion("0"); err != nil {
		return err
	}
	if _, err := b.logs.KeygenTrusted(ctx, b.bin, b.hive, b.lab); err != nil {
		return err
	}
	// The script reaches hosts the way a user of nix-hive would by hand:
	// through the config nix-hive generates (ProxyJump chains, pinned keys).
	out, err := b.logs.Run(ctx, "setup", nil, b.bin, "-c", b.hive, "ssh-config")
	if err != nil {
		return err
	}
	// And it multiplexes, as a careful person's script would: without
	// ControlMaster every consumer costs three handshakes (region, rack,
	// node), and at 40 at once on this machine ProxyJump's banner
	// exchanges time out. Even multiplexed, a few did within the config's
	// ConnectTimeout (10 s) at full size, and a script stops at its first
	// failure, so it waits longer (ssh keeps the first value it reads).
	b.sshCfg = filepath.Join(b.work, "ssh_config")
	mux := fmt.Sprintf("Host *\n\tControlMaster auto\n\tControlPath %s/cm-%%C\n\tControlPersist 120\n\tConnectTimeout 60\n\n", b.work)
	out = append([]byte(mux), out...)
	if err := os.WriteFile(b.sshCfg, out, 0o644); err != nil {
		return fmt.Errorf("write %s: %w", b.sshCfg, err)
	}
	last := b.lab.Hosts[len(b.lab.Hosts)-1].Name
	if _, err := b.logs.Run(ctx, "setup", nil, "ssh", "-F", b.sshCfg, "--", last, "true"); err != nil {
		return fmt.Errorf("the script's ssh config does not reach %s: %w", last, err)
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

// parallel is how many hosts the script works on at once: what nix-hive
// chooses by default for this tree (deploy.AutoParallel: 8 per store),
// unless -parallel says.
func (b *bench) parallel() int {
	if b.o.parallel > 0 {
		return b.o.parallel
	}
	return min(max(16, 8*(b.o.racks+1)), 256)
}

// deployRow is one measured deploy: of the systems of version, to targets
// (nil: all), by nix-hive or the script.
type deployRow struct {
	version, what string
	targets       []string
	script        bool
}

// deployRuns are the deploys measured, in order. Each gets systems of its
// own version, built beforehand: the times are evaluation, transfers and
// activations. The script runs before nix-hive at full size, so that the
// no-op redeploy, status and run that follow find nix-hive's systems.
func (b *bench) deployRuns(tenth []string) []deployRow {
	runs := []deployRow{{"tenth", "nix-hive deploy, a tenth", tenth, false}}
	if b.o.baselines != "none" {
		runs = append(runs, deployRow{"script-tenth", "script, a tenth", tenth, true})
	}
	if b.o.baselines == "all" {
		runs = append(runs, deployRow{"script-all", "script, all", nil, true})
	}
	runs = append(runs, deployRow{"all", allWhat, nil, false})
	return runs
}

func (b *bench) measureAll(ctx context.Context) []*row {
	all := len(b.lab.Hosts)
	tenth := b.tenth()
	deploy := []string{"-v", "-c", b.hive, "deploy"}
	if b.o.parallel > 0 {
		deploy = append(deploy, "--parallel", fmt.Sprint(b.o.parallel))
	}
	var rows []*row
	add := func(r *row) {
		rows = append(rows, r)
		if r.err == nil {
			fmt.Fprintf(os.Stderr, "%s: %.1fs\n", r.what, r.wall.Seconds())
		}
	}
	runs := b.deployRuns(tenth)
	for _, p := range runs {
		if ctx.Err() != nil {
			return rows
		}
		r := &row{what: p.what, hosts: len(p.targets), deploy: true, script: p.script}
		if p.targets == nil {
			r.hosts = all
		}
		if r.err = b.setVersion(p.version); r.err == nil {
			r.closure, r.err = b.build(ctx, p.version)
		}
		if r.err == nil && p.script {
			b.measureScript(ctx, r, p.version, p.targets)
		} else if r.err == nil {
			b.measure(ctx, r, append(deploy, p.targets...)...)
		}
		if r.err == nil {
			r.err = b.check(p.targets)
		}
		add(r)
	}
	for _, c := range []struct {
		what string
		args []string
	}{
		{noopWhat, deploy},
		{"status", []string{"-v", "-c", b.hive, "status"}},
		{"run '*' -- true", []string{"-v", "-c", b.hive, "run", "*", "--", "true"}},
	} {
		if ctx.Err() != nil {
			return rows
		}
		r := &row{what: c.what, hosts: all}
		b.measure(ctx, r, c.args...)
		add(r)
	}
	b.measureInProcess(ctx, add)
	b.measureMux(ctx, deploy, add)
	b.measureAutoMux(ctx, deploy, add)
	if b.o.rollback {
		b.measureRollback(ctx, deploy, add)
	}
	return rows
}

// measureRollback deploys new systems to every host once more, so that
// every host has an earlier good generation (those outside the tenth had
// only one), and then rolls every host back to it: each must run the
// system of the deploy of all again. It comes last, so that no later row
// finds a fleet that runs what the hive does not say.
func (b *bench) measureRollback(ctx context.Context, deploy []string, add func(*row)) {
	if ctx.Err() != nil {
		return
	}
	prev := maps.Clone(b.out)
	r := &row{what: againWhat, hosts: len(b.lab.Hosts), deploy: true}
	if r.err = b.setVersion("again"); r.err == nil {
		r.closure, r.err = b.build(ctx, "again")
	}
	if r.err == nil {
		b.measure(ctx, r, deploy...)
	}
	if r.err == nil {
		r.err = b.check(nil)
	}
	add(r)
	if r.err != nil || ctx.Err() != nil {
		return
	}
	rb := &row{what: rollbackWhat, hosts: len(b.lab.Hosts)}
	b.measure(ctx, rb, "-v", "-c", b.hive, "rollback", "*")
	if rb.err == nil {
		b.out = prev
		rb.err = b.check(nil)
	}
	add(rb)
}

// measureInProcess measures, in this process, connections alone and a
// later status --watch round.
func (b *bench) measureInProcess(ctx context.Context, add func(*row)) {
	all := len(b.lab.Hosts)
	if ctx.Err() == nil {
		r := &row{what: floorWhat, hosts: all, floor: true}
		b.measureFloor(ctx, r)
		add(r)
	}
	if ctx.Err() == nil {
		r := &row{what: heldWhat, hosts: all, held: true}
		b.measureHeld(ctx, r)
		add(r)
	}
}

const (
	muxStartWhat  = "mux start (connections, sftp sessions)"
	muxNoopWhat   = "no-op redeploy, through mux"
	muxStatusWhat = "status, through mux"
)

// measureMux starts the holder with mux start, runs status and the no-op
// redeploy through it, and stops it.
func (b *bench) measureMux(ctx context.Context, deploy []string, add func(*row)) {
	b.measureHolder(ctx, add, command{muxStartWhat, []string{"-c", b.hive, "mux", "start", "--idle", "0"}}, muxStartPidRE,
		command{muxStatusWhat, []string{"-v", "-c", b.hive, "status"}}, command{muxNoopWhat, deploy})
}

const (
	autoFirstWhat  = "status, default settings: the first (starts a holder)"
	autoStatusWhat = "status, default settings: the next"
	autoNoopWhat   = "no-op redeploy, default settings: the next"
)

// measureAutoMux runs commands as an operator who changed no setting
// does: the first starts a holder (--mux-persist defaults to 10m, which
// the benchmark's environment turns off for every other row), the next
// ones go through it.
func (b *bench) measureAutoMux(ctx context.Context, deploy []string, add func(*row)) {
	persist := []string{"--mux-persist", "10m"}
	status := append([]string{"-v", "-c", b.hive, "status"}, persist...)
	b.measureHolder(ctx, add, command{autoFirstWhat, status}, autoStartPidRE,
		command{autoStatusWhat, status}, command{autoNoopWhat, append(slices.Clone(deploy), persist...)})
}

// measureHolder runs first, which leaves a holder running (its log names
// the holder's pid, found with pidRE), then cmds through it, and stops
// it. first's CPU and peak RSS include the holder's.
func (b *bench) measureHolder(ctx context.Context, add func(*row), first command, pidRE *regexp.Regexp, cmds ...command) {
	if ctx.Err() != nil {
		return
	}
	r := &row{what: first.what, hosts: len(b.lab.Hosts), mux: true}
	b.measure(ctx, r, first.args...)
	add(r)
	defer b.logs.Run(context.WithoutCancel(ctx), logName(first.what)+"-stop", nil, b.bin, "-c", b.hive, "mux", "stop")
	if r.err != nil {
		return
	}
	pid, err := holderPid(filepath.Join(b.logs.Logs, logName(r.what)+".log"), pidRE)
	if err != nil {
		r.err = err
		return
	}
	r.ownCPU += procCPU(pid)
	r.rssKiB = max(r.rssKiB, peakRSS(pid))
	b.measureThrough(ctx, pid, add, cmds...)
}

type command struct {
	what string
	args []string
}

// measureThrough runs each command through the holder pid; their own CPU
// includes the holder's over the same time, and every host's system is
// checked after each.
func (b *bench) measureThrough(ctx context.Context, pid int, add func(*row), cmds ...command) {
	for _, c := range cmds {
		if ctx.Err() != nil {
			break
		}
		r := &row{what: c.what, hosts: len(b.lab.Hosts), mux: true}
		before := procCPU(pid)
		b.measure(ctx, r, c.args...)
		r.ownCPU += procCPU(pid) - before
		r.rssKiB = max(r.rssKiB, peakRSS(pid)) // the holder's, if larger
		if r.err == nil {
			r.err = b.check(nil)
		}
		add(r)
	}
}

var (
	muxStartPidRE  = regexp.MustCompile(`mux: pid (\d+) holds`)
	autoStartPidRE = regexp.MustCompile(`mux: started connection holder pid (\d+)`)
)

// holderPid reads the holder's pid from the log of the command that
// started it.
func holderPid(log string, re *regexp.Regexp) (int, error) {
	b, err := os.ReadFile(log)
	if err != nil {
		return 0, err
	}
	m := re.FindSubmatch(b)
	if m == nil {
		return 0, fmt.Errorf("%s: no holder pid in it", log)
	}
	return strconv.Atoi(string(m[1]))
}

// procCPU is the user and system time pid has used so far, 0 if it cannot
// be read.
func procCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command name, which is in parentheses and may hold
	// spaces: utime and stime are fields 14 and 15 of the line.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * time.Second / clockTicks
}

// clockTicks is USER_HZ, the unit of /proc's CPU times: 100 on every
// Linux architecture Go runs on.
const clockTicks = 100

func logName(what string) string {
	return strings.NewReplacer(" ", "-", "'", "", "*", "", ",", "", "(", "", ")", "").Replace(what)
}

const (
	floorWhat = "SSH connections alone"
	heldWhat  = "status --watch, a later round"
)

// check says whether every host of targets (nil: all) runs the system
// last built for it.
func (b *bench) check(targets []string) error {
	var bad []string
	for _, w := range harness.Wrong(b.lab, b.outPath) {
		name, _, _ := strings.Cut(w, " ")
		if targets == nil || slices.Contains(targets, name) {
			bad = append(bad, w)
		}
	}
	if len(bad) > 0 {
		return fmt.Errorf("%d hosts do not run their system, e.g. %s", len(bad), bad[0])
	}
	return nil
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

// counters are the readings a row is the difference of.
type counters struct {
	nft map[string]wire.Value
	cpu float64 // seconds of CPU this machine (and so every lab host) used
}

func (b *bench) read(ctx context.Context) (counters, error) {
	c, err := b.counter.Read(ctx)
	if err != nil {
		return counters{}, err
	}
	cpu, err := machineCPU()
	return counters{nft: c, cpu: cpu}, err
}

// around runs fn between two readings of the counters and fills in r.
func (b *bench) around(ctx context.Context, r *row, fn func() error) {
	c0, err := b.read(ctx)
	if err != nil {
		r.err = err
		return
	}
	self0 := selfCPU()
	start := time.Now()
	if b.side != nil {
		r.sideCPU, err = b.side.run(fn)
		r.sideKnown = err == nil
	} else {
		err = fn()
	}
	r.wall = time.Since(start)
	r.ownCPU = selfCPU() - self0 // measure replaces it with nix-hive's
	if err != nil {
		r.err = err
		return
	}
	c1, err := b.read(ctx)
	if err != nil {
		r.err = err
		return
	}
	d := wire.Sub(c1.nft, c0.nft)
	r.up, r.down, r.tcpConns = d["to_region"].Bytes, d["from_region"].Bytes, int(d["new_conns"].Packets)
	r.packets = [2]uint64{d["to_region"].Packets, d["from_region"].Packets}
	r.cpu = c1.cpu - c0.cpu
}

// measure runs nix-hive (with -v, for its count of SSH connections).
func (b *bench) measure(ctx context.Context, r *row, args ...string) {
	logName := logName(r.what)
	logs := *b.logs
	var fds int
	var hwm int64
	var ownCPU time.Duration
	logs.Watch = func(pid int) func() { return watchFDs(pid, &fds, &hwm) }
	// The hosts are read outside the timed window (and the CPU counted).
	var hosts0 hostReading
	if accounted(r.what) {
		if hosts0, r.err = b.readHosts(ctx); r.err != nil {
			return
		}
	}
	b.around(ctx, r, func() error {
		_, ps, err := logs.RunState(ctx, logName, nil, b.bin, args...)
		if ps != nil {
			ownCPU = ps.UserTime() + ps.SystemTime()
		}
		r.fds, r.rssKiB = fds, hwm
		return err
	})
	r.ownCPU = ownCPU
	var line sshLine
	switch {
	case r.err != nil || r.what == muxStartWhat: // it prints no count: it is the holder's
	case r.mux:
		line, r.err = muxCounts(filepath.Join(b.logs.Logs, logName+".log"))
	default:
		line, r.err = sshCounts(filepath.Join(b.logs.Logs, logName+".log"))
	}
	r.sshConns, r.sessions = line.conns, line.sessions
	if accounted(r.what) && r.err == nil {
		hosts1, err := b.readHosts(ctx)
		if err != nil {
			r.err = err
			return
		}
		r.acct = &account{ssh: line}
		r.acct.fill(b.acct, b.lab.Hosts, hosts0, hosts1)
	}
}

// selfCPU is the CPU time this process has used.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// watchFDs samples how many files pid has open, and its peak RSS, until
// stop is called, keeping the largest in *peak and *hwm. A sample counts
// only if the process had not exited when it was taken: the harness
// reaps it before calling stop, and on a lab of 1,000 hosts its pid is
// soon another process's (rows once showed 226 and 240 open files that
// were some other process's).
func watchFDs(pid int, peak *int, hwm *int64) (stop func()) {
	done := make(chan struct{})
	finished := make(chan struct{})
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	// Opened before the harness reaps pid, so it is that process's.
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return func() {}
	}
	running := func() bool {
		fds := []unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, 0)
		return err == nil && n == 0
	}
	go func() {
		defer close(finished)
		defer unix.Close(pidfd)
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for {
			ents, err := os.ReadDir(dir)
			rss := peakRSS(pid)
			if running() {
				if err == nil {
					*peak = max(*peak, len(ents))
				}
				*hwm = max(*hwm, rss)
			}
			select {
			case <-done:
				return
			case <-t.C:
			}
		}
	}()
	return func() { close(done); <-finished }
}

// peakRSS is pid's VmHWM in KiB (0 if it cannot be read): the high-water
// mark of its own memory since it exec'd. (wait4's ru_maxrss would do,
// but Linux folds the forking process's peak into it at exec: a child of
// this program, after it held a thousand connections itself, would
// report this program's memory.)
func peakRSS(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return n
		}
	}
	return 0
}

// machineCPU is the CPU time this machine has spent (user, nice, system,
// irq, softirq) in seconds, from /proc/stat.
func machineCPU() (float64, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 8 || f[0] != "cpu" {
		return 0, fmt.Errorf("/proc/stat: unexpected first line %q", line)
	}
	var ticks float64
	for _, i := range []int{1, 2, 3, 6, 7} {
		v, err := strconv.ParseFloat(f[i], 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/stat: %w", err)
		}
		ticks += v
	}
	return ticks / 100, nil // USER_HZ is 100 on Linux
}

func (b *bench) report(w *os.File, rows []*row) {
	fmt.Fprintf(w, "\nnix-hive fleet benchmark: %s -> %d racks -> %d consumers (%d hosts), %d MiB payload per system, nix-hive deploy --parallel %s, script %d at once\n",
		regionName, b.o.racks, b.o.racks*b.perRack, len(b.lab.Hosts), b.o.payloadMiB, b.parallelFlag(), b.parallel())
	fmt.Fprintf(w, "times include nix-hive's evaluation; systems were built beforehand; MiB up = bytes this machine sent to the region's sshd (nft);\n")
	fmt.Fprintf(w, "control = (up - closure) / hosts; down = what the region's sshd sent back / hosts; TCP = connections this machine opened to the\n")
	fmt.Fprintf(w, "region (nft SYN); SSH = nix-hive's connections\n")
	fmt.Fprintf(w, "(direct and through jump hosts, from its -v) and sessions; CPU = what the whole machine, lab hosts included, spent per host;\n")
	fmt.Fprintf(w, "own CPU = nix-hive's share of it, with the nix commands it runs (this program's, for the last two rows): what a fleet\n")
	fmt.Fprintf(w, "whose hosts have CPUs of their own would still cost this machine; deploy host CPU = the same for either side, nix-hive or the\n")
	fmt.Fprintf(w, "script (its ssh clients, their ControlMasters, nix copy), from a cgroup this program runs the command in\n\n")
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "command\thosts\twall s\tms/host\tMiB up\tclosure MiB\tup/closure\tcontrol KiB/host\tdown KiB/host\tTCP\tSSH conns\tsessions\tpeak RSS MiB\tpeak FDs\tCPU ms/host\town CPU ms/host\tdeploy host CPU ms/host\t")
	for _, r := range rows {
		if r.err != nil {
			fmt.Fprintf(tw, "%s\t%d\tFAILED\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\n", r.what, r.hosts)
			continue
		}
		closure, ratio := "-", "-"
		if r.closure > 0 {
			closure = harness.MiB(r.closure)
			ratio = fmt.Sprintf("%.2f", float64(r.up)/float64(r.closure))
		}
		conns, sessions, rss, fds, own := "-", "-", "-", "-", "-"
		switch {
		case r.floor, r.held:
			conns, sessions = fmt.Sprint(r.sshConns), fmt.Sprint(r.sessions)
		case !r.script:
			conns, sessions = fmt.Sprint(r.sshConns), fmt.Sprint(r.sessions)
			rss, fds = fmt.Sprintf("%.0f", float64(r.rssKiB)/1024), fmt.Sprint(r.fds)
		}
		if !r.script {
			own = fmt.Sprintf("%.1f", r.ownMsPerHost())
		}
		side := "-"
		if r.sideKnown {
			side = fmt.Sprintf("%.1f", r.sideMsPerHost())
		}
		fmt.Fprintf(tw, "%s\t%d\t%.1f\t%.0f\t%s\t%s\t%s\t%.1f\t%.1f\t%d\t%s\t%s\t%s\t%s\t%.0f\t%s\t%s\t\n", r.what, r.hosts, r.wall.Seconds(),
			r.msPerHost(), harness.MiB(r.up), closure, ratio, r.controlKiB(), r.downKiB(), r.tcpConns, conns, sessions, rss, fds, 1000*r.cpu/float64(r.hosts), own, side)
	}
	tw.Flush()
	b.reportAccount(w, rows)
	fmt.Fprintln(w, "\ngoals (issue 14):")
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, g := range goals(rows) {
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", g.what, g.target, g.value, g.verdict())
	}
	tw.Flush()
	fmt.Fprintln(w, "\ngoals (issue 28):")
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, g := range accountGoals(rows) {
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", g.what, g.target, g.value, g.verdict())
	}
	tw.Flush()
}

func (b *bench) parallelFlag() string {
	if b.o.parallel > 0 {
		return fmt.Sprint(b.o.parallel)
	}
	return "default"
}

func (r *row) msPerHost() float64 { return float64(r.wall.Milliseconds()) / float64(r.hosts) }

func (r *row) sideMsPerHost() float64 {
	return float64(r.sideCPU.Microseconds()) / 1000 / float64(r.hosts)
}

func (r *row) ownMsPerHost() float64 {
	return float64(r.ownCPU.Microseconds()) / 1000 / float64(r.hosts)
}

// controlKiB is what crossed the uplink per host besides the closures.
func (r *row) controlKiB() float64 {
	return (float64(r.up) - float64(r.closure)) / 1024 / float64(r.hosts)
}

// downKiB is what came back over the uplink per host.
func (r *row) downKiB() float64 { return float64(r.down) / 1024 / float64(r.hosts) }

// goal is one target of the issue and the value measured for it.
type goal struct {
	what, target, value string
	ok, known           bool
	info                bool // a measurement beside the goals, no goal of its own
}

func (g goal) verdict() string {
	switch {
	case g.info:
		return "-"
	case !g.known:
		return "not measured"
	case g.ok:
		return "met"
	}
	return "MISSED"
}

func goals(rows []*row) []goal {
	find := func(what string) *row {
		for _, r := range rows {
			if r.what == what && r.err == nil {
				return r
			}
		}
		return nil
	}
	tenth, all := find("nix-hive deploy, a tenth"), find(allWhat)
	noop, status, floor, held := find(noopWhat), find("status"), find(floorWhat), find(heldWhat)
	var gs []goal
	g := goal{what: "every host runs the new system after nix-hive deploy, all", target: "all"}
	if r := rowNamed(rows, allWhat); r != nil {
		g.known, g.ok = true, r.err == nil
		g.value = "yes"
		if r.err != nil {
			g.value = r.err.Error()
		}
	}
	gs = append(gs, g)
	g = goal{what: "upload, all: at most 1.2 x closure + 16 KiB per host", target: "<= 1.2 x closure + 16 KiB x hosts"}
	if all != nil {
		limit := 1.2*float64(all.closure) + 16*1024*float64(all.hosts)
		g.known, g.ok = true, float64(all.up) <= limit
		g.value = fmt.Sprintf("%s MiB for %s MiB of closures; %.1f KiB/host control", harness.MiB(all.up), harness.MiB(all.closure), all.controlKiB())
	}
	gs = append(gs, g)
	g = goal{what: "time per host, all / a tenth", target: "<= 1.30"}
	if tenth != nil && all != nil {
		ratio := all.msPerHost() / tenth.msPerHost()
		g.known, g.ok, g.value = true, ratio <= 1.3, fmt.Sprintf("%.2f (%.0f / %.0f ms)", ratio, all.msPerHost(), tenth.msPerHost())
	}
	gs = append(gs, g)
	gs = append(gs, oneShotGoals(noop, status, floor, held)...)
	gs = append(gs, muxGoals(find(muxStartWhat), find(muxNoopWhat), find(muxStatusWhat))...)
	gs = append(gs, muxGoals(find(autoFirstWhat), find(autoNoopWhat), find(autoStatusWhat))...)
	var rss int64
	for _, r := range rows {
		if r.err == nil && !r.script {
			rss = max(rss, r.rssKiB)
		}
	}
	gs = append(gs, goal{what: "nix-hive peak RSS", target: "< 500 MB", known: rss > 0, ok: rss*1024 < 500e6,
		value: fmt.Sprintf("%.0f MB", float64(rss)*1024/1e6)})
	return gs
}

// oneShotGoals are the 10 s goals of status and the no-op redeploy
// without a holder, with the floor and the watch round beside them, and
// their ratio.
func oneShotGoals(noop, status, floor, held *row) []goal {
	var gs []goal
	for _, r := range []*row{noop, status} {
		if r == nil {
			continue
		}
		value := fmt.Sprintf("%.1f s (the machine spent %.0f ms CPU per host, nix-hive %.1f)", r.wall.Seconds(),
			1000*r.cpu/float64(r.hosts), r.ownMsPerHost())
		if floor != nil {
			value += fmt.Sprintf("; a connection per host alone took %.1f s (%.0f ms CPU per host)", floor.wall.Seconds(), 1000*floor.cpu/float64(floor.hosts))
		}
		if held != nil && r == status {
			value += fmt.Sprintf("; a later round of status --watch %.1f s (%.1f ms CPU per host)", held.wall.Seconds(), 1000*held.cpu/float64(held.hosts))
		}
		gs = append(gs, goal{what: r.what + " of all", target: "< 10 s", known: true, ok: r.wall < 10*time.Second, value: value})
	}
	if noop != nil && status != nil {
		ratio := noop.wall.Seconds() / status.wall.Seconds()
		gs = append(gs, goal{what: "no-op redeploy / status", target: "little more than 1", known: true, ok: ratio <= 1.5,
			value: fmt.Sprintf("%.2f", ratio)})
	}
	return gs
}

// muxGoals are the 10 s goals measured through a holder, with what
// started it, and their ratio.
func muxGoals(muxStart, muxNoop, muxStatus *row) []goal {
	var gs []goal
	for _, r := range []*row{muxNoop, muxStatus} {
		if r == nil {
			continue
		}
		value := fmt.Sprintf("%.1f s (the machine spent %.0f ms CPU per host, nix-hive and its holder %.1f; %d new connections, %d sessions)",
			r.wall.Seconds(), 1000*r.cpu/float64(r.hosts), r.ownMsPerHost(), r.sshConns, r.sessions)
		if muxStart != nil {
			value += fmt.Sprintf("; %s: %.1f s", muxStart.what, muxStart.wall.Seconds())
		}
		gs = append(gs, goal{what: r.what + ", all", target: "< 10 s", known: true, ok: r.wall < 10*time.Second, value: value})
	}
	if muxNoop != nil && muxStatus != nil {
		ratio := muxNoop.wall.Seconds() / muxStatus.wall.Seconds()
		gs = append(gs, goal{what: muxNoop.what + " / status", target: "little more than 1", known: true, ok: ratio <= 1.5,
			value: fmt.Sprintf("%.2f", ratio)})
	}
	return gs
}

func rowNamed(rows []*row, what string) *row {
	for _, r := range rows {
		if r.what == what {
			return r
		}
	}
	return nil
}

// stepper prints setup progress with the time each step took.
func stepper() func(string) {
	last := time.Now()
	return func(msg string) {
		fmt.Fprintf(os.Stderr, "%6.1fs %s\n", time.Since(last).Seconds(), msg)
		last = time.Now()
	}
}
