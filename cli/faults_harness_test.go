package cli_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/nix-hive/nix-hive/cli"
	"github.com/nix-hive/nix-hive/internal/nixtest"
	"github.com/nix-hive/nix-hive/lab"
	"github.com/nix-hive/nix-hive/lab/labtest"
	"github.com/nix-hive/nix-hive/state"
)

// faultLab is a lab of plain hosts app-1..app-N, each the only instance
// of a system of its own (so each can be given a faulty variant), with a
// hive key every host trusts.
type faultLab struct {
	t   *testing.T
	lab *lab.Lab
	dir string
}

func newFaultLab(t *testing.T, n int) *faultLab { return newFaultLabOf(t, appLab(t, n)) }

// newFaultLabOf is newFaultLab on lab l, made by the test.
func newFaultLabOf(t *testing.T, l *lab.Lab) *faultLab {
	root, _ := filepath.Abs("..")
	f := &faultLab{t: t, lab: l, dir: t.TempDir()}
	f.write("lab.nix", l.HiveNix())
	f.write("hive.nix", fmt.Sprintf(`let
  lab = import ./lab.nix;
  ts = import %q;
  variants = import ./variants.nix;
in {
  signing.keyFile = "keys/hive.sec";
  systems = builtins.mapAttrs (n: _: { toplevel = ts ({ name = "app"; } // (variants.${n} or { })); }) lab;
  instances = builtins.mapAttrs (n: v: v // { system = n; }) lab;
}`, filepath.Join(root, "examples", "testsystems")))
	f.variants(nil)
	keygenTrusted(t, f.run, l, nil)
	return f
}

// appLab starts a lab of plain hosts app-1..app-n for tests that run nix.
func appLab(t *testing.T, n int) *lab.Lab { return appLabWith(t, n, lab.Config{}) }

// appLabWith is appLab with the rest of the lab's configuration.
func appLabWith(t *testing.T, n int, cfg lab.Config) *lab.Lab {
	nixtest.Require(t)
	cfg.Names = make([]string, n)
	for i := range cfg.Names {
		cfg.Names[i] = fmt.Sprintf("app-%d", i+1)
	}
	return labtest.New(t, cfg)
}

// keygenTrusted makes the hive's key pair and has every lab host but
// those in except trust it, as lib/module.nix does on NixOS; it returns
// the public key.
func keygenTrusted(t *testing.T, run func(...string) (int, string, string), l *lab.Lab, except map[string]bool) string {
	t.Helper()
	code, out, _ := run("keygen")
	if code != 0 {
		t.Fatal("keygen failed")
	}
	pub := strings.TrimSpace(out)
	for _, h := range l.Hosts {
		if except[h.Name] {
			continue
		}
		if err := h.WriteNixConf("trusted-public-keys = " + pub); err != nil {
			t.Fatal(err)
		}
	}
	return pub
}

func (f *faultLab) write(name, text string) {
	f.t.Helper()
	if err := os.WriteFile(filepath.Join(f.dir, name), []byte(text), 0o644); err != nil {
		f.t.Fatal(err)
	}
}

// variants sets each host's test-system arguments (Nix attributes, e.g.
// `version = "2"; gate = true;`); hosts not named run version 1.
func (f *faultLab) variants(v map[string]string) { f.writeAttrs("variants.nix", v) }

// writeAttrs writes file as a Nix attribute set of each host's attributes
// (Nix text).
func (f *faultLab) writeAttrs(file string, v map[string]string) {
	var b strings.Builder
	b.WriteString("{\n")
	for h, attrs := range v {
		fmt.Fprintf(&b, "  %q = { %s };\n", h, attrs)
	}
	b.WriteString("}\n")
	f.write(file, b.String())
}

func (f *faultLab) run(args ...string) (int, string, string) {
	f.t.Helper()
	var o, e bytes.Buffer
	code := cli.Main("test", append([]string{"-c", f.dir}, args...), &o, &e)
	f.t.Logf("nix-hive %s: exit %d\n--- stdout\n%s--- stderr\n%s", strings.Join(args, " "), code, o.String(), e.String())
	return code, o.String(), e.String()
}

// built is the path hive.state records for host's system.
func (f *faultLab) built(host string) string {
	f.t.Helper()
	return f.state().Systems[host].OutPath
}

func (f *faultLab) state() *state.File {
	f.t.Helper()
	st, err := state.Load(filepath.Join(f.dir, "hive.state"))
	if err != nil {
		f.t.Fatal(err)
	}
	return st
}

// hostSystem is what a host runs: /run/current-system, the profile's
// target and its generation link.
type hostSystem struct{ active, profile, link string }

func (f *faultLab) system(host string) hostSystem {
	h := f.lab.Host(host)
	var s hostSystem
	s.active, _ = os.Readlink(h.Path("/run/current-system"))
	s.link, _ = os.Readlink(h.Path("/nix/var/nix/profiles/system"))
	if s.link != "" {
		s.profile, _ = os.Readlink(h.Path("/nix/var/nix/profiles/" + s.link))
	}
	return s
}

// waitActivation waits until host's test system logs an activation of
// path with goal (the stand-in writes the line when it starts).
func (f *faultLab) waitActivation(host, path, goal string) {
	f.t.Helper()
	waitUntil(f.t, host+" to start activating "+path, func() bool {
		b, _ := os.ReadFile(f.lab.Host(host).Path("/run/nix-hive-test/activations"))
		return strings.Contains(string(b), " "+path+" "+goal+"\n")
	})
}

func (f *faultLab) openGate(host string) {
	f.t.Helper()
	if err := os.WriteFile(f.lab.Host(host).Path("/run/nix-hive-test/gate"), nil, 0o644); err != nil {
		f.t.Fatal(err)
	}
}

// settled waits until no activation job runs on host, so that its final
// state is what the host will keep.
func (f *faultLab) settled(host string) {
	f.t.Helper()
	waitUntil(f.t, "the activation jobs on "+host+" to end", func() bool {
		out, err := f.lab.Host(host).Exec(context.Background(), "sh", "-c",
			"[ ! -e /run/nix-hive/activation.lock ] || flock -n /run/nix-hive/activation.lock true")
		return err == nil && len(out) == 0
	})
}

// silence stops host h and puts a listener that accepts TCP and never
// speaks in its sshd's place, until the test ends (or Close).
func silence(t *testing.T, h *lab.Host) *lab.Silent {
	t.Helper()
	if err := h.Stop(); err != nil {
		t.Fatal(err)
	}
	s, err := h.Faults().Silence()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// activationsOf are the test system's records of its activations on
// host, one "TIME PATH GOAL" line each.
func (f *faultLab) activationsOf(host string) []string {
	b, _ := os.ReadFile(f.lab.Host(host).Path("/run/nix-hive-test/activations"))
	return strings.Split(strings.TrimSpace(string(b)), "\n")
}

// lastActivation is the host's own record of nix-hive's last activation.
func (f *faultLab) lastActivation(host string) string {
	b, _ := os.ReadFile(f.lab.Host(host).Path("/nix/var/nix-hive/last"))
	return strings.TrimSpace(string(b))
}

// watched collects output and lets a test wait for a line in it: how a
// test synchronises on nix-hive's events.
type watched struct {
	mu   sync.Mutex
	cond *sync.Cond
	buf  bytes.Buffer
}

func newWatched() *watched {
	w := &watched{}
	w.cond = sync.NewCond(&w.mu)
	return w
}

func (w *watched) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.cond.Broadcast()
	return w.buf.Write(p)
}

func (w *watched) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

// waitFor blocks until the output matches re (or done closes first).
func (w *watched) waitFor(t *testing.T, re string, done <-chan struct{}) {
	t.Helper()
	rx := regexp.MustCompile(re)
	ended := make(chan struct{})
	defer close(ended)
	// A bound against a hang, not a speed assertion.
	hang := time.NewTimer(3 * time.Minute)
	defer hang.Stop()
	var hung bool
	go func() {
		select {
		case <-done:
		case <-ended:
		case <-hang.C:
			w.mu.Lock()
			hung = true
			w.mu.Unlock()
		}
		w.mu.Lock()
		w.cond.Broadcast()
		w.mu.Unlock()
	}()
	w.mu.Lock()
	defer w.mu.Unlock()
	for !rx.Match(w.buf.Bytes()) {
		select {
		case <-done:
			t.Fatalf("nix-hive ended before printing %q:\n%s", re, w.buf.String())
		default:
		}
		if hung {
			t.Fatalf("nix-hive did not print %q:\n%s", re, w.buf.String())
		}
		w.cond.Wait()
	}
}

// running is a deploy started in the background: in this process, or as
// a process of its own (to be killed or interrupted).
type running struct {
	t              *testing.T
	args           []string
	stdout, stderr *watched
	done           chan struct{}
	code           int
	cmd            *exec.Cmd
	ended          time.Time
}

func (f *faultLab) start(args ...string) *running { return startIn(f.t, f.dir, args...) }

// startIn runs nix-hive on the hive in dir in the background, in this
// process.
func startIn(t *testing.T, dir string, args ...string) *running {
	r := &running{t: t, args: args, stdout: newWatched(), stderr: newWatched(), done: make(chan struct{})}
	go func() {
		defer close(r.done)
		r.code = cli.Main("test", append([]string{"-c", dir}, args...), r.stdout, r.stderr)
		r.ended = time.Now()
	}()
	return r
}

func (f *faultLab) startProcess(args ...string) *running { return startProcessIn(f.t, f.dir, args...) }

// startProcessIn runs nix-hive (this test binary, see TestMain) on the
// hive in dir as a process of its own, in a process group of its own, with
// a private TMPDIR so that what it leaves behind can be found.
func startProcessIn(t *testing.T, dir string, args ...string) *running {
	r := &running{t: t, args: args, stdout: newWatched(), stderr: newWatched(), done: make(chan struct{})}
	r.cmd = exec.Command("nix-hive", append([]string{"-c", dir}, args...)...)
	r.cmd.Stdout, r.cmd.Stderr = r.stdout, r.stderr
	r.cmd.Env = append(os.Environ(), "TMPDIR="+t.TempDir())
	r.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(r.done)
		r.cmd.Wait()
		r.code = r.cmd.ProcessState.ExitCode()
		if ws, ok := r.cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			r.code = 128 + int(ws.Signal())
		}
		r.ended = time.Now()
	}()
	return r
}

func (r *running) signal(sig syscall.Signal) {
	r.t.Helper()
	if err := r.cmd.Process.Signal(sig); err != nil {
		r.t.Fatalf("signal %v: %v", sig, err)
	}
}

// waitUntil waits for cond while nix-hive runs, as waitUntil does; if it
// ends first or the wait gives up, the test fails with what it printed.
func (r *running) waitUntil(what string, cond func() bool) {
	r.t.Helper()
	ended := false
	err := waitFor(what, func() bool {
		select {
		case <-r.done:
			ended = true
		default:
		}
		return cond() || ended
	})
	if err == nil && !ended {
		return
	}
	if err == nil {
		err = fmt.Errorf("nix-hive ended (exit %d) before %s", r.code, what)
	}
	r.t.Fatalf("%v\nnix-hive %s:\n--- stdout\n%s--- stderr\n%s", err, strings.Join(r.args, " "), r.stdout.String(), r.stderr.String())
}

// wait waits for the deploy to end; a hang is a failure, bounded so the
// suite reports it instead of timing out.
func (r *running) wait() int {
	r.t.Helper()
	select {
	case <-r.done:
	case <-time.After(5 * time.Minute):
		r.t.Fatalf("nix-hive %s did not end:\n%s\n%s", strings.Join(r.args, " "), r.stdout.String(), r.stderr.String())
	}
	r.t.Logf("nix-hive %s: exit %d\n--- stdout\n%s--- stderr\n%s", strings.Join(r.args, " "), r.code, r.stdout.String(), r.stderr.String())
	return r.code
}

// faultRow is one fault's line in the table the suite prints.
type faultRow struct {
	fault    string
	exit     int
	outcome  string        // the faulty host's summary status
	hosts    string        // every host's final system, checked
	wrong    int           // hosts not in the state the fault should leave
	badExit  bool          // exited 0 although a host failed
	lost     int           // hive.state records lost
	took     time.Duration // from the fault to the deploy's end
	finished bool
	// interrupt: the fault is a Ctrl-C or SIGTERM, which should end the
	// command within a second (took).
	interrupt bool
	// attacks tried with hostile hive data: how many ran a command from
	// it, and how many values outside an allowlist were accepted.
	attacks, ranFromHive, accepted int
}

var faultTable struct {
	mu   sync.Mutex
	rows []faultRow
}

func addFaultRow(r faultRow) {
	faultTable.mu.Lock()
	defer faultTable.mu.Unlock()
	faultTable.rows = append(faultTable.rows, r)
}

// printFaultTable logs the fault suite's table and its measures.
func printFaultTable(t *testing.T) {
	faultTable.mu.Lock()
	defer faultTable.mu.Unlock()
	rows := faultTable.rows
	sort.SliceStable(rows, func(i, j int) bool { return rows[i].fault < rows[j].fault })
	var b strings.Builder
	tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "FAULT\tEXIT\tOUTCOME\tHOSTS AT THE END\tWRONG\tEXIT 0 ON FAILURE\tLOST RECORDS\tFAULT TO END")
	var wrong, bad, lost, interrupts, slow, attacks, ran, accepted int
	var longest time.Duration
	for _, r := range rows {
		took := "-"
		if r.took > 0 {
			took = r.took.Round(100 * time.Millisecond).String()
			longest = max(longest, r.took)
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%d\t%v\t%d\t%s\n", r.fault, r.exit, r.outcome, r.hosts, r.wrong, r.badExit, r.lost, took)
		wrong += r.wrong
		lost += r.lost
		if r.badExit {
			bad++
		}
		attacks, ran, accepted = attacks+r.attacks, ran+r.ranFromHive, accepted+r.accepted
		if r.interrupt {
			interrupts++
			if r.took > time.Second || r.exit != 130 {
				slow++
			}
		}
	}
	tw.Flush()
	fmt.Fprintf(&b, "\nfaults tried: %d\nhosts left in an unknown or half-switched state: %d (goal 0)\nruns that exited 0 with a failed host: %d (goal 0)\nrecords lost from hive.state: %d (goal 0)\nlongest time a fault kept a deploy from ending: %s (goal: connect timeout + confirm timeout + a few seconds)\n",
		len(rows), wrong, bad, lost, longest.Round(100*time.Millisecond))
	fmt.Fprintf(&b, "interrupts not honoured within 1 s with exit 130: %d of %d (goal 0)\n", slow, interrupts)
	fmt.Fprintf(&b, "attacks tried with hostile hive data: %d; commands run from hive data: %d (goal 0); values outside the allowlist accepted: %d (goal 0)\n", attacks, ran, accepted)
	fmt.Fprintf(&b, "(a hostile policy's peak memory: go test -v -run TestMemoryLimit ./starlark)\n")
	t.Logf("fault suite:\n%s", b.String())
}
