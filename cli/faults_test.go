package cli_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nix-hive/nix-hive/deploy"
	"github.com/nix-hive/nix-hive/eval"
	"github.com/nix-hive/nix-hive/host"
	"github.com/nix-hive/nix-hive/lab"
	"github.com/nix-hive/nix-hive/nixcmd"
	"github.com/nix-hive/nix-hive/transport"
)

// The fault suite: one test per fault injected on the lab while a deploy
// runs. Each asserts every host's final system, the summary, the exit
// status and hive.state, and adds a row to the table printed at the end
// (go test -v -run TestFaults ./cli shows it).

const (
	faultConnect = "3s" // --connect-timeout in the fault suite
	faultConfirm = "5s" // --confirm-timeout
)

func TestFaults(t *testing.T) {
	t.Cleanup(func() { printFaultTable(t) })
	t.Run("connection cut mid-activation", testFaultConnectionCut)
	t.Run("nix-hive killed mid-activation", testFaultKilled)
	t.Run("system stops sshd", func(t *testing.T) { testFaultBreaksSSH(t, `sshd = "off";`, false) })
	// On hosts whose sh is bash, as NixOS's is: the job's waits are
	// bash's timed reads, the expired one included.
	t.Run("system firewalls port 22", func(t *testing.T) { testFaultBreaksSSH(t, `firewall = "block-ssh";`, true) })
	t.Run("host accepts TCP and never answers", testFaultSilentHost)
	t.Run("host frozen mid-activation", testFaultFrozen)
	t.Run("concurrent deploys", testFaultConcurrent)
	t.Run("failed switch then boot", testFaultSwitchThenBoot)
	t.Run("post-check rollback after a failed deploy", testFaultRollbackAfterFailure)
	t.Run("post-check rollback with goal test", testFaultRollbackGoalTest)
	t.Run("activation timeout", testFaultActivationTimeout)
	t.Run("second interrupt", testFaultSecondInterrupt)
	t.Run("interrupt ends a stuck push", testFaultStuckPush)
	t.Run("rollback skips a rolled-back generation", testFaultRollbackSkipsRolledBack)
	t.Run("nix-hive killed during a post-check", testFaultKilledDuringCheck)
	t.Run("interrupt while connecting", testFaultInterruptConnecting)
	t.Run("hostile hive values", testFaultHostileHiveValues)
	t.Run("ssh options outside the allowlist", testFaultSSHOptionsOutsideAllowlist)
	t.Run("bad copy on a store", testFaultBadStoreCopy)
	t.Run("a key's command hangs", testFaultKeyCommandHangs)
	t.Run("Ctrl-C during a key's command", testFaultKeyCommandInterrupted)
	t.Run("nix-hive killed during a key upload", testFaultKeyUploadKilled)
	t.Run("a policy past its memory limit", testFaultPolicyMemory)
}

// baseline deploys version 1 everywhere and returns its paths.
func (f *faultLab) baseline() map[string]string {
	f.t.Helper()
	if code, _, _ := f.run("deploy", "--connect-timeout", faultConnect); code != 0 {
		f.t.Fatal("baseline deploy failed")
	}
	v1 := map[string]string{}
	for _, h := range f.lab.Hosts {
		v1[h.Name] = f.built(h.Name)
	}
	return v1
}

// build builds the current variants and returns their paths.
func (f *faultLab) build() map[string]string {
	f.t.Helper()
	if code, _, _ := f.run("build"); code != 0 {
		f.t.Fatal("build failed")
	}
	out := map[string]string{}
	for _, h := range f.lab.Hosts {
		out[h.Name] = f.built(h.Name)
	}
	return out
}

// expect compares every host's final system with want (active and
// profile target; "" profile means whatever active is) and returns a
// description of the hosts and how many are not as they should be.
func (f *faultLab) expect(want map[string]hostSystem) (string, int) {
	f.t.Helper()
	var parts []string
	wrong := 0
	for _, h := range f.lab.Hosts {
		f.settled(h.Name)
		got, w := f.system(h.Name), want[h.Name]
		if w.profile == "" {
			w.profile = w.active
		}
		state := "ok"
		if got.active != w.active || got.profile != w.profile || (w.link != "" && got.link != w.link) {
			state = "WRONG"
			wrong++
			f.t.Errorf("%s: active %s, profile %s (%s); want active %s, profile %s %s", h.Name, got.active, got.profile, got.link, w.active, w.profile, w.link)
		}
		parts = append(parts, fmt.Sprintf("%s %s %s", h.Name, version(got.active), state))
	}
	return strings.Join(parts, ", "), wrong
}

// version is the test system's version from its store path.
func version(path string) string {
	if i := strings.LastIndex(path, "-"); i >= 0 {
		return "v" + path[i+1:]
	}
	return "none"
}

// recorded checks hive.state's record of each host and returns how many
// are missing or wrong.
func (f *faultLab) recorded(want map[string]string) int {
	f.t.Helper()
	st := f.state()
	lost := 0
	for h, status := range want {
		if got := st.Instances[h].Status; got != status {
			lost++
			f.t.Errorf("hive.state for %s: %q, want %q", h, got, status)
		}
	}
	return lost
}

func summaryHas(t *testing.T, out, host string, want ...string) string {
	t.Helper()
	line := summaryLine(out, host)
	for _, w := range want {
		if !strings.Contains(line, w) {
			t.Errorf("%s summary %q lacks %q", host, line, w)
		}
	}
	fields := strings.Fields(line)
	if len(fields) > 3 {
		return fields[3]
	}
	return "?"
}

// A dropped connection while switch-to-configuration runs: the detached
// activation completes, nix-hive reconnects and reports what happened.
func testFaultConnectionCut(t *testing.T) {
	f := newFaultLab(t, 2)
	v1 := f.baseline()
	f.variants(map[string]string{"app-1": `version = "2"; gate = true;`, "app-2": `version = "2";`})
	v2 := f.build()
	r := f.start("deploy", "--no", "build", "--connect-timeout", faultConnect)
	f.waitActivation("app-1", v2["app-1"], "switch")
	if n, err := f.lab.Host("app-1").Faults().CutConnections(); err != nil || n == 0 {
		t.Fatalf("cut connections: %d %v", n, err)
	}
	cut := time.Now()
	r.stderr.waitFor(t, `app-1 \[wave 1\] activate info: connection lost`, r.done)
	f.openGate("app-1")
	code := r.wait()
	out := r.stdout.String()
	if code != 0 {
		t.Errorf("exit %d, want 0: the activation finished on the host", code)
	}
	outcome := summaryHas(t, out, "app-1", " ok ")
	summaryHas(t, out, "app-2", " ok ")
	hosts, wrong := f.expect(map[string]hostSystem{"app-1": {active: v2["app-1"]}, "app-2": {active: v2["app-2"]}})
	lost := f.recorded(map[string]string{"app-1": "ok", "app-2": "ok"})
	_ = v1
	addFaultRow(faultRow{fault: "connection cut mid-activation", exit: code, outcome: outcome, hosts: hosts, wrong: wrong,
		badExit: false, lost: lost, took: r.ended.Sub(cut)})
}

// nix-hive killed (SIGKILL) while switch-to-configuration runs: the
// activation completes on the host. Without magic rollback the host stays
// on the new system and the next deploy finds it done; with it, the host
// returns to the old system by itself, unconfirmed, and the next deploy
// (started while that job still runs) waits for it and says how it ended.
func testFaultKilled(t *testing.T) {
	f := newFaultLab(t, 1)
	v1 := f.baseline()
	f.variants(map[string]string{"app-1": `version = "2"; gate = true;`})
	v2 := f.build()

	// No magic rollback: the job finishes and stays.
	r := f.startProcess("deploy", "--no", "build", "--no-magic-rollback", "--connect-timeout", faultConnect)
	f.waitActivation("app-1", v2["app-1"], "switch")
	r.signal(syscall.SIGKILL)
	killed := time.Now()
	if code := r.wait(); code != 128+int(syscall.SIGKILL) {
		t.Fatalf("exit %d after SIGKILL", code)
	}
	f.openGate("app-1")
	f.settled("app-1")
	if got := f.system("app-1"); got.active != v2["app-1"] || got.profile != v2["app-1"] {
		t.Errorf("after the kill the activation did not complete: %+v", got)
	}
	code, out, _ := f.run("deploy", "--no", "build", "--connect-timeout", faultConnect)
	if code != 0 || !strings.Contains(summaryLine(out, "app-1"), "unchanged") {
		t.Errorf("the next deploy should find app-1 done (unchanged), exit 0: %d\n%s", code, out)
	}
	hosts, wrong := f.expect(map[string]hostSystem{"app-1": {active: v2["app-1"]}})
	addFaultRow(faultRow{fault: "nix-hive SIGKILLed mid-activation (--no-magic-rollback)", exit: code,
		outcome: "next deploy: unchanged", hosts: hosts, wrong: wrong, lost: f.recorded(map[string]string{"app-1": "unchanged"}),
		took: 0, finished: !killed.IsZero()})

	// Magic rollback: back to version 2's predecessor... deploy version 3.
	f.lab.Host("app-1").Exec(t.Context(), "rm", "-f", "/run/nix-hive-test/gate")
	f.variants(map[string]string{"app-1": `version = "3"; gate = true;`})
	v3 := f.build()
	r = f.startProcess("deploy", "--no", "build", "--confirm-timeout", faultConfirm, "--connect-timeout", faultConnect)
	f.waitActivation("app-1", v3["app-1"], "switch")
	r.signal(syscall.SIGKILL)
	r.wait()
	next := f.start("deploy", "--no", "build", "--confirm-timeout", faultConfirm, "--connect-timeout", faultConnect)
	next.stderr.waitFor(t, `app-1 \[wave 1\] activate info: waiting for activation job \S+ of an earlier deploy`, next.done)
	f.openGate("app-1")
	next.stderr.waitFor(t, `earlier activation job \S+ ended: done rolled-back not confirmed`, next.done)
	code = next.wait()
	if code != 0 {
		t.Errorf("the next deploy should activate version 3 after the earlier job rolled back: exit %d", code)
	}
	outcome := summaryHas(t, next.stdout.String(), "app-1", " ok ")
	hosts, wrong = f.expect(map[string]hostSystem{"app-1": {active: v3["app-1"]}})
	addFaultRow(faultRow{fault: "nix-hive SIGKILLed mid-activation (magic rollback)", exit: code,
		outcome: "rolled back itself; next deploy " + outcome, hosts: hosts, wrong: wrong,
		lost: f.recorded(map[string]string{"app-1": "ok"})})
	_ = v1
}

// A system that breaks SSH (stops sshd, or firewalls port 22): no new
// connection gets through to confirm, so the host returns to the system
// it ran before by itself; the deploy says so and exits non-zero.
//
// With bash, every host's sh is bash (as NixOS's is), so the job started
// there, and the agent's start, wait for a line with bash's timed read:
// the test fails if they ran timeout for it, or did not run under bash.
func testFaultBreaksSSH(t *testing.T, variant string, bash bool) {
	f := newFaultLab(t, 2)
	waits := map[string]func() (shells, timeouts []string){}
	if bash {
		for _, n := range []string{"app-1", "app-2"} {
			waits[n] = bashAsSh(t, f.lab.Host(n))
		}
	}
	v1 := f.baseline()
	f.variants(map[string]string{"app-1": `version = "2"; ` + variant, "app-2": `version = "2";`})
	v2 := f.build()
	start := time.Now()
	code, out, errOut := f.run("deploy", "--no", "build", "--confirm-timeout", faultConfirm, "--connect-timeout", faultConnect)
	took := time.Since(start)
	if code == 0 {
		t.Error("exit 0 although app-1 rolled back")
	}
	outcome := summaryHas(t, out, "app-1", "rolled-back", "not confirmed within 5s")
	summaryHas(t, out, "app-2", " ok ")
	if !strings.Contains(errOut, "deploy failed on 1 of 2 hosts") {
		t.Errorf("final error: %s", errOut)
	}
	hosts, wrong := f.expect(map[string]hostSystem{"app-1": {active: v1["app-1"], link: "system-1-link"}, "app-2": {active: v2["app-2"]}})
	// The host is reachable again.
	if c, runOut, _ := f.run("run", "--connect-timeout", faultConnect, "app-1", "--", "readlink", "/run/current-system"); c != 0 || !strings.Contains(runOut, v1["app-1"]) {
		t.Errorf("app-1 not reachable on its old system after rolling back: %d %s", c, runOut)
	}
	lost := f.recorded(map[string]string{"app-1": "rolled-back", "app-2": "ok"})
	for n, read := range waits {
		shells, timeouts := read()
		if !slices.ContainsFunc(shells, func(l string) bool { return strings.Contains(l, "/job.sh ") }) ||
			!slices.ContainsFunc(shells, func(l string) bool { return strings.Contains(l, " start ") }) {
			t.Errorf("%s: the shells bash ran as sh were %q; want the job and the agent's start among them", n, shells)
		}
		if !slices.ContainsFunc(timeouts, func(l string) bool { return strings.Contains(l, "switch-to-configuration") }) {
			t.Errorf("%s: timeout ran %q; want switch-to-configuration bounded by it", n, timeouts)
		}
		for _, l := range timeouts {
			if strings.Contains(l, "sh -c") {
				t.Errorf("%s: timeout ran %q; bash's read -t should wait for that line", n, l)
			}
		}
	}
	if bash {
		variant += " (sh is bash)"
	}
	addFaultRow(faultRow{fault: "system with " + strings.TrimSuffix(variant, ";"), exit: code, outcome: outcome, hosts: hosts,
		wrong: wrong, badExit: code == 0, lost: lost, took: took})
}

// A host that accepts TCP and never answers: deploy, status and run end
// within the connect bound, naming it; the other host is deployed.
func testFaultSilentHost(t *testing.T) {
	f := newFaultLab(t, 2)
	v1 := f.baseline()
	f.variants(map[string]string{"app-1": `version = "2";`, "app-2": `version = "2";`})
	v2 := f.build()
	h := f.lab.Host("app-1")
	silent := silence(t, h)
	start := time.Now()
	code, out, _ := f.run("deploy", "--no", "build", "--connect-timeout", faultConnect)
	took := time.Since(start)
	outcome := summaryHas(t, out, "app-1", "failed", "no answer within 3s")
	summaryHas(t, out, "app-2", " ok ")
	if code == 0 {
		t.Error("exit 0 with app-1 unreachable")
	}
	for _, cmd := range [][]string{{"status", "--connect-timeout", faultConnect}, {"run", "--connect-timeout", faultConnect, "*", "--", "true"}} {
		c, o, e := f.run(cmd...)
		if c == 0 || !strings.Contains(o+e, "app-1") || !strings.Contains(o+e, "no answer within 3s") {
			t.Errorf("%s: exit %d, want non-zero naming app-1 and the timeout", cmd[0], c)
		}
		// status: a generation not known is "-", not 0.
		if cmd[0] == "status" && !regexp.MustCompile(`(?m)^app-1\s+\S+\s+-\s`).MatchString(o) {
			t.Errorf("status shows a generation for unreachable app-1:\n%s", o)
		}
	}
	if silent.Accepted() == 0 {
		t.Error("nothing connected to the silent host: the fault was not exercised")
	}
	silent.Close()
	if err := h.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	hosts, wrong := f.expect(map[string]hostSystem{"app-1": {active: v1["app-1"]}, "app-2": {active: v2["app-2"]}})
	addFaultRow(faultRow{fault: "host accepts TCP, never answers", exit: code, outcome: outcome, hosts: hosts, wrong: wrong,
		badExit: code == 0, lost: f.recorded(map[string]string{"app-1": "failed", "app-2": "ok"}), took: took})
}

// Ctrl-C (or SIGTERM) while a command waits for a host that accepts TCP
// and never speaks SSH ends it at once, exit 130, saying what it
// interrupted, whatever the command and whether or not it goes through a
// connection holder. --connect-timeout is a minute, so only the interrupt
// can end them early. Through a holder, a silent host is given up after
// --connect-timeout, as without one.
func testFaultInterruptConnecting(t *testing.T) {
	f := newFaultLab(t, 2)
	f.baseline()
	h := f.lab.Host("app-1")
	silent := silence(t, h)
	const patient = "60s"
	interrupt := func(how string, sig syscall.Signal, args ...string) {
		t.Helper()
		before := silent.Accepted()
		r := f.startProcess(append(args, "--connect-timeout", patient)...)
		waitUntil(t, how+" to connect to the silent host", func() bool { return silent.Accepted() > before })
		r.signal(sig)
		sent := time.Now()
		code := r.wait()
		took := r.ended.Sub(sent)
		ok := code == 130 && strings.Contains(r.stderr.String(), "interrupted") && took < time.Minute
		if !ok {
			t.Errorf("%s: exit %d after %s (want 130 before the connect timeout, saying what was interrupted):\n%s", how, code, took.Round(time.Millisecond), r.stderr.String())
		}
		outcome := "exit 130, interrupted"
		if !ok {
			outcome = fmt.Sprintf("exit %d", code)
		}
		addFaultRow(faultRow{fault: "interrupt while connecting: " + how, exit: code, outcome: outcome, hosts: "-",
			badExit: code == 0, took: took, finished: true, interrupt: true})
	}
	interrupt("run, SIGINT", syscall.SIGINT, "run", "app-1", "--", "true")
	interrupt("ssh, SIGINT", syscall.SIGINT, "ssh", "app-1", "true")
	interrupt("status, SIGINT", syscall.SIGINT, "status")
	interrupt("deploy, SIGTERM", syscall.SIGTERM, "deploy", "--no", "build")
	interrupt("plan, SIGINT", syscall.SIGINT, "plan", "--no", "build")

	// Through a holder (connected to app-2 only).
	if code, _, _ := f.run("mux", "start", "app-2"); code != 0 {
		t.Fatalf("mux start: exit %d", code)
	}
	defer f.run("mux", "stop")
	interrupt("status through a holder, SIGINT", syscall.SIGINT, "status")
	interrupt("deploy through a holder, SIGINT", syscall.SIGINT, "deploy", "--no", "build")
	for _, cmd := range []string{"status", "deploy"} {
		start := time.Now()
		code, out, errOut := f.run(cmd, "--connect-timeout", faultConnect)
		took := time.Since(start)
		if code != 1 || !strings.Contains(out+errOut, "no answer within "+faultConnect) {
			t.Errorf("%s through a holder with app-1 silent: exit %d, want 1 and app-1 given up after --connect-timeout (%s)", cmd, code, faultConnect)
		}
		addFaultRow(faultRow{fault: cmd + " through a holder, silent host, --connect-timeout " + faultConnect, exit: code, outcome: "given up", hosts: "-",
			badExit: code == 0, took: took, finished: true})
	}
}

// A host that freezes (SIGSTOP) while it activates: nix-hive gives up on
// it after the reconnect window and reports its outcome unknown, the
// other host is deployed; once thawed, the unconfirmed job returns the
// host to its old system.
func testFaultFrozen(t *testing.T) {
	f := newFaultLab(t, 2)
	v1 := f.baseline()
	f.variants(map[string]string{"app-1": `version = "2"; gate = true;`, "app-2": `version = "2";`})
	v2 := f.build()
	r := f.start("deploy", "--no", "build", "--confirm-timeout", faultConfirm, "--connect-timeout", faultConnect)
	f.waitActivation("app-1", v2["app-1"], "switch")
	h := f.lab.Host("app-1")
	if err := h.Faults().Freeze(); err != nil {
		t.Fatal(err)
	}
	frozen := time.Now()
	f.openGate("app-1") // seen once the host thaws
	code := r.wait()
	took := r.ended.Sub(frozen)
	if err := h.Faults().Thaw(); err != nil {
		t.Fatal(err)
	}
	out := r.stdout.String()
	if code == 0 {
		t.Error("exit 0 with app-1 frozen")
	}
	outcome := summaryHas(t, out, "app-1", "unknown", "finishes on the host")
	summaryHas(t, out, "app-2", " ok ")
	if !strings.Contains(r.stderr.String(), "may still run there") {
		t.Errorf("the deploy does not say app-1's activation may still run:\n%s", r.stderr.String())
	}
	hosts, wrong := f.expect(map[string]hostSystem{"app-1": {active: v1["app-1"], link: "system-1-link"}, "app-2": {active: v2["app-2"]}})
	if last := f.lastActivation("app-1"); !strings.HasSuffix(last, "rolled-back") {
		t.Errorf("app-1's own record: %q, want the job rolled back, unconfirmed", last)
	}
	addFaultRow(faultRow{fault: "host frozen (SIGSTOP) mid-activation", exit: code, outcome: outcome, hosts: hosts, wrong: wrong,
		badExit: code == 0, lost: f.recorded(map[string]string{"app-1": "unknown", "app-2": "ok"}), took: took})
}

// Two deploys at once: of different hosts, both records are kept; of the
// same host, the second is refused at once, naming the first.
func testFaultConcurrent(t *testing.T) {
	f := newFaultLab(t, 2)
	f.baseline()
	f.variants(map[string]string{"app-1": `version = "2"; gate = true;`, "app-2": `version = "2"; gate = true;`})
	v2 := f.build()
	a := f.start("deploy", "--no", "build", "--connect-timeout", faultConnect, "app-1")
	b := f.start("deploy", "--no", "build", "--connect-timeout", faultConnect, "app-2")
	f.waitActivation("app-1", v2["app-1"], "switch")
	f.waitActivation("app-2", v2["app-2"], "switch")
	// Same host: refused while a holds it.
	started := time.Now()
	code, out, _ := f.run("deploy", "--no", "build", "--connect-timeout", faultConnect, "app-1")
	took := time.Since(started)
	outcome := summaryHas(t, out, "app-1", "failed", "lock", "locked by another deploy", "nix-hive pid")
	if code == 0 {
		t.Error("the second deploy of app-1 exited 0")
	}
	f.openGate("app-1")
	f.openGate("app-2")
	if ca, cb := a.wait(), b.wait(); ca != 0 || cb != 0 {
		t.Errorf("concurrent deploys of different hosts: exit %d and %d", ca, cb)
	}
	hosts, wrong := f.expect(map[string]hostSystem{"app-1": {active: v2["app-1"]}, "app-2": {active: v2["app-2"]}})
	lost := f.recorded(map[string]string{"app-1": "ok", "app-2": "ok"})
	addFaultRow(faultRow{fault: "two deploys at once (other host, same host)", exit: code, outcome: "same host: " + outcome,
		hosts: hosts, wrong: wrong, badExit: code == 0, lost: lost, took: took})
}

// A switch that fails (without magic rollback the profile already points
// at the new system), then --goal boot: the boot activation runs, and the
// deploy exits 0 only because it did.
func testFaultSwitchThenBoot(t *testing.T) {
	f := newFaultLab(t, 1)
	v1 := f.baseline()
	f.variants(map[string]string{"app-1": `version = "2"; failOn = [ "switch" ];`})
	v2 := f.build()
	code, out, _ := f.run("deploy", "--no", "build", "--no-magic-rollback")
	if code == 0 {
		t.Fatal("the failing switch exited 0")
	}
	summaryHas(t, out, "app-1", "failed", "activate", "exited 1")
	if got := f.system("app-1"); got.profile != v2["app-1"] || got.active != v1["app-1"] {
		t.Fatalf("after the failed switch: %+v (want profile on v2, v1 active)", got)
	}
	code, out, _ = f.run("deploy", "--no", "build", "--goal", "boot")
	outcome := summaryHas(t, out, "app-1", " ok ")
	acts, _ := os.ReadFile(f.lab.Host("app-1").Path("/run/nix-hive-test/activations"))
	if !strings.Contains(string(acts), v2["app-1"]+" boot\n") {
		t.Errorf("the boot activation never ran:\n%s", acts)
	}
	if code != 0 {
		t.Errorf("boot deploy exit %d", code)
	}
	hosts, wrong := f.expect(map[string]hostSystem{"app-1": {active: v1["app-1"], profile: v2["app-1"]}})
	addFaultRow(faultRow{fault: "failed switch, then --goal boot", exit: code, outcome: outcome, hosts: hosts, wrong: wrong,
		badExit: false, lost: f.recorded(map[string]string{"app-1": "ok"})})
}

const rollbackPolicy = `
on_failure = "rollback"

def post_activate(ctx):
    fail("health check failed on %s" % ctx.instance.name)
`

// A failed post-check after an earlier failed deploy left the profile on
// a generation that never ran: the rollback returns to exactly what ran
// before this deploy (that generation, the system that was active), not
// to the profile's previous generation.
func testFaultRollbackAfterFailure(t *testing.T) {
	f := newFaultLab(t, 1)
	v1 := f.baseline()
	f.variants(map[string]string{"app-1": `version = "2"; failOn = [ "switch" ];`})
	v2 := f.build()
	if code, _, _ := f.run("deploy", "--no", "build", "--no-magic-rollback"); code == 0 {
		t.Fatal("the failing switch exited 0")
	}
	f.variants(map[string]string{"app-1": `version = "3";`})
	f.build()
	f.write("hive.star", rollbackPolicy)
	defer os.Remove(filepath.Join(f.dir, "hive.star"))
	code, out, _ := f.run("deploy", "--no", "build")
	outcome := summaryHas(t, out, "app-1", "rolled-back", "rollback", "health check failed")
	if code == 0 {
		t.Error("exit 0 after a rollback")
	}
	hosts, wrong := f.expect(map[string]hostSystem{"app-1": {active: v1["app-1"], profile: v2["app-1"], link: "system-2-link"}})
	addFaultRow(faultRow{fault: "post-check rollback after an earlier failed deploy", exit: code, outcome: outcome, hosts: hosts,
		wrong: wrong, badExit: code == 0, lost: f.recorded(map[string]string{"app-1": "rolled-back"})})
}

// rollback goes to the last generation confirmed good on the host, never
// to one that was itself rolled back: version 2 failed its post-check and
// was rolled back (its generation stays), version 3 is fine; rollback
// returns to version 1. With no good generation before the current one,
// rollback says so and changes nothing.
func testFaultRollbackSkipsRolledBack(t *testing.T) {
	f := newFaultLab(t, 1)
	v1 := f.baseline()
	f.variants(map[string]string{"app-1": `version = "2";`})
	f.build()
	f.write("hive.star", rollbackPolicy)
	if code, out, _ := f.run("deploy", "--no", "build"); code == 0 || !strings.Contains(summaryLine(out, "app-1"), "rolled-back") {
		t.Fatalf("version 2 was not rolled back: exit %d", code)
	}
	if err := os.Remove(filepath.Join(f.dir, "hive.star")); err != nil {
		t.Fatal(err)
	}
	f.variants(map[string]string{"app-1": `version = "3";`})
	f.build()
	if code, _, _ := f.run("deploy", "--no", "build"); code != 0 || f.system("app-1").link != "system-3-link" {
		t.Fatalf("version 3: exit %d, %+v", code, f.system("app-1"))
	}
	code, _, _ := f.run("rollback", "--confirm-timeout", faultConfirm, "app-1")
	if code != 0 {
		t.Errorf("rollback: exit %d", code)
	}
	hosts, wrong := f.expect(map[string]hostSystem{"app-1": {active: v1["app-1"], link: "system-1-link"}})
	// hive.state says so, and plan --offline knows the host is behind.
	lost := 0
	if rec := f.state().Instances["app-1"]; rec.OutPath != v1["app-1"] || rec.Status != "ok" || rec.Step != "rollback" {
		lost++
		t.Errorf("hive.state after the rollback: %+v; want ok at rollback, running %s", rec, v1["app-1"])
	}
	if code, out, _ := f.run("plan", "--offline"); code != 0 || !strings.Contains(out, "changes: 1 to change, 0 unchanged") {
		t.Errorf("plan --offline after the rollback: exit %d, want app-1 to change:\n%s", code, out)
	}
	outcome := "back on v1"
	if wrong > 0 {
		outcome = "WRONG generation"
	}
	// Nothing good before generation 1: said, and nothing is touched.
	last := f.lastActivation("app-1")
	code2, out2, errOut2 := f.run("rollback", "--confirm-timeout", faultConfirm, "app-1")
	if code2 != 1 || !strings.Contains(out2+errOut2, "recorded as good") || !strings.Contains(out2+errOut2, "nothing was changed") {
		t.Errorf("a rollback with no good generation to go to: exit %d, want 1 and why:\n%s%s", code2, out2, errOut2)
	}
	if got := f.lastActivation("app-1"); got != last {
		t.Errorf("the refused rollback changed the host's record: %q, was %q", got, last)
	}
	_, wrong2 := f.expect(map[string]hostSystem{"app-1": {active: v1["app-1"], link: "system-1-link"}})
	addFaultRow(faultRow{fault: "rollback after a rolled-back generation", exit: code, outcome: outcome, hosts: hosts, wrong: wrong + wrong2,
		badExit: code2 == 0, lost: lost})
}

// slowCheckPolicy makes app-1 a canary wave of its own whose post-check
// says it started (/run/check-started), waits for /run/check-go, and
// passes only if /run/check-verdict says "pass".
const slowCheckPolicy = `
def waves(instances):
    return [[i for i in instances if i.name == "app-1"], [i for i in instances if i.name != "app-1"]]

def post_activate(ctx):
    r = ctx.run("touch /run/check-started; while [ ! -e /run/check-go ]; do sleep 0.05; done; cat /run/check-verdict")
    if r.stdout.strip() != "pass":
        fail("unhealthy: " + r.stdout.strip())
`

// nix-hive SIGKILLed while the canary's post-check runs: the canary runs
// the new system, but its checks never finished, so its record on the
// host says so. The rerun runs the checks again (not the activation);
// they fail, and the policy stops the rollout: wave 2 never starts.
func testFaultKilledDuringCheck(t *testing.T) {
	f := newFaultLab(t, 2)
	v1 := f.baseline()
	f.write("hive.star", slowCheckPolicy)
	f.variants(map[string]string{"app-1": `version = "2";`, "app-2": `version = "2";`})
	v2 := f.build()
	r := f.startProcess("deploy", "--no", "build", "--confirm-timeout", faultConfirm, "--connect-timeout", faultConnect)
	canary := f.lab.Host("app-1")
	r.waitUntil("app-1's post-check to start", func() bool {
		_, err := os.Stat(canary.Path("/run/check-started"))
		return err == nil
	})
	r.signal(syscall.SIGKILL)
	killed := time.Now()
	r.wait()
	if last := f.lastActivation("app-1"); !strings.HasSuffix(last, v2["app-1"]+" activated") {
		t.Errorf("app-1's record while its checks had not finished: %q, want the activation of %s awaiting them", last, v2["app-1"])
	}
	for name, text := range map[string]string{"/run/check-verdict": "fail\n", "/run/check-go": ""} {
		if err := os.WriteFile(canary.Path(name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	code, out, _ := f.run("deploy", "--no", "build", "--confirm-timeout", faultConfirm, "--connect-timeout", faultConnect)
	if code != 1 {
		t.Errorf("rerun: exit %d, want 1", code)
	}
	outcome := summaryHas(t, out, "app-1", "failed", "unhealthy: fail")
	summaryHas(t, out, "app-2", "not-started")
	if n := strings.Count(strings.Join(f.activationsOf("app-1"), "\n"), v2["app-1"]); n != 1 {
		t.Errorf("app-1 activated %s %d times; the rerun should only check it", v2["app-1"], n)
	}
	if last := f.lastActivation("app-1"); !strings.HasSuffix(last, v2["app-1"]+" failed") {
		t.Errorf("app-1's record after its checks failed: %q", last)
	}
	hosts, wrong := f.expect(map[string]hostSystem{"app-1": {active: v2["app-1"]}, "app-2": {active: v1["app-2"]}})
	addFaultRow(faultRow{fault: "nix-hive SIGKILLed during a canary's post-check", exit: code, outcome: "rerun checks again: " + outcome,
		hosts: hosts, wrong: wrong, badExit: code == 0, lost: f.recorded(map[string]string{"app-1": "failed", "app-2": "not-started"}),
		finished: !killed.IsZero()})
}

// With --goal test the profile never moves, so a rollback must not move
// it either: only the active system returns.
func testFaultRollbackGoalTest(t *testing.T) {
	f := newFaultLab(t, 1)
	v1 := f.baseline()
	f.variants(map[string]string{"app-1": `version = "2";`})
	f.build()
	f.write("hive.star", rollbackPolicy)
	code, out, _ := f.run("deploy", "--no", "build", "--goal", "test")
	outcome := summaryHas(t, out, "app-1", "rolled-back", "health check failed")
	if code == 0 {
		t.Error("exit 0 after a rollback")
	}
	hosts, wrong := f.expect(map[string]hostSystem{"app-1": {active: v1["app-1"], link: "system-1-link"}})
	if _, err := os.Lstat(f.lab.Host("app-1").Path("/nix/var/nix/profiles/system-2-link")); err == nil {
		t.Error("goal test created a profile generation")
	}
	addFaultRow(faultRow{fault: "post-check rollback with --goal test", exit: code, outcome: outcome, hosts: hosts,
		wrong: wrong, badExit: code == 0, lost: f.recorded(map[string]string{"app-1": "rolled-back"})})
}

// Ctrl-C waits for running activations; a second one stops waiting at
// once and names the hosts whose activation still runs. That activation
// finishes on the host, and unconfirmed it returns to the old system.
func testFaultSecondInterrupt(t *testing.T) {
	f := newFaultLab(t, 2)
	v1 := f.baseline()
	f.variants(map[string]string{"app-1": `version = "2"; gate = true;`, "app-2": `version = "2";`})
	v2 := f.build()
	r := f.startProcess("deploy", "--no", "build", "--parallel", "1", "--confirm-timeout", faultConfirm, "--connect-timeout", faultConnect, "app-1", "app-2")
	f.waitActivation("app-1", v2["app-1"], "switch")
	// app-2's closure moves while app-1 activates; once it is there,
	// Ctrl-C finds nothing of app-2's under way, and app-2 is not started.
	// (Interrupted mid-push, it would say so: TestExecutorInterrupted*.)
	r.stderr.waitFor(t, `app-2 \[wave 1\] push ok`, r.done)
	r.signal(syscall.SIGINT)
	r.stderr.waitFor(t, `waiting for 1 running activation\(s\) \(\[app-1\]\)`, r.done)
	select {
	case <-r.done:
		t.Fatal("nix-hive ended after the first interrupt while an activation ran")
	default:
	}
	r.signal(syscall.SIGINT)
	second := time.Now()
	code := r.wait()
	if code != 130 {
		t.Errorf("exit %d, want 130", code)
	}
	outcome := summaryHas(t, r.stdout.String(), "app-1", "unknown", "finishes on the host")
	summaryHas(t, r.stdout.String(), "app-2", "not-started")
	if !strings.Contains(r.stderr.String(), "app-1") || !strings.Contains(r.stderr.String(), "may still run there") {
		t.Errorf("stderr does not name the host whose activation still runs:\n%s", r.stderr.String())
	}
	f.openGate("app-1")
	hosts, wrong := f.expect(map[string]hostSystem{"app-1": {active: v1["app-1"], link: "system-1-link"}, "app-2": {active: v1["app-2"]}})
	addFaultRow(faultRow{fault: "second Ctrl-C during an activation", exit: code, outcome: outcome, hosts: hosts, wrong: wrong,
		badExit: code == 0, lost: f.recorded(map[string]string{"app-1": "unknown", "app-2": "not-started"}), took: r.ended.Sub(second), interrupt: true})
}

// A push stuck on a frozen host, with a connect timeout long enough not
// to end it: SIGTERM to nix-hive alone ends the deploy, and nothing it
// started (nix, ssh) outlives it.
func testFaultStuckPush(t *testing.T) {
	f := newFaultLab(t, 1)
	v1 := f.baseline()
	f.variants(map[string]string{"app-1": `version = "2"; payloadMiB = 128;`})
	f.build()
	r := f.startProcess("--json", "deploy", "--no", "build", "--connect-timeout", "60s")
	r.stdout.waitFor(t, `"instance":"app-1","wave":1,"step":"push","status":"start"`, r.done)
	h := f.lab.Host("app-1")
	if err := h.Faults().Freeze(); err != nil {
		t.Fatal(err)
	}
	defer h.Faults().Thaw()
	r.signal(syscall.SIGTERM)
	term := time.Now()
	code := r.wait()
	if code != 130 {
		t.Errorf("exit %d after SIGTERM, want 130", code)
	}
	res := reportOf(t, r.stdout.String()).Results["app-1"]
	if res.Status != "interrupted" || res.Step != "push" {
		t.Errorf("app-1: %+v, want interrupted at push", res)
	}
	outcome := res.Status
	tmp := r.cmd.Env[len(r.cmd.Env)-1][len("TMPDIR="):]
	if out, err := exec.Command("pgrep", "-af", tmp).Output(); err == nil {
		t.Errorf("processes of the deploy outlived it:\n%s", out)
	}
	h.Faults().Thaw()
	hosts, wrong := f.expect(map[string]hostSystem{"app-1": {active: v1["app-1"]}})
	addFaultRow(faultRow{fault: "SIGTERM during a push stuck on a frozen host", exit: code, outcome: outcome, hosts: hosts, wrong: wrong,
		badExit: code == 0, lost: f.recorded(map[string]string{"app-1": "interrupted"}), took: r.ended.Sub(term), interrupt: true})
}

// reportOf is the final report of a --json deploy.
func reportOf(t *testing.T, out string) event {
	t.Helper()
	evs := events(t, out)
	if len(evs) == 0 || evs[len(evs)-1].Type != "report" {
		t.Fatalf("no report at the end of:\n%s", out)
	}
	return evs[len(evs)-1]
}

// --goal boot --reboot --no-boot-fallback: the host reboots (the lab
// emulates it: /run empties, the boot follows the system profile),
// nix-hive waits for it to come back and checks it runs the new system
// (boot_test.go has the boot fallback). Without --goal boot,
// --reboot is a usage error.
func TestDeployBootWithReboot(t *testing.T) {
	f := newFaultLab(t, 2)
	v1 := f.baseline()
	f.variants(map[string]string{"app-1": `version = "2";`})
	v2 := f.build()
	if code, _, errOut := f.run("deploy", "--no", "build", "--reboot"); code != 2 || !strings.Contains(errOut, "--reboot needs --goal boot") {
		t.Errorf("--reboot without --goal boot: exit %d, %s", code, errOut)
	}
	code, out, errOut := f.run("deploy", "--no", "build", "--goal", "boot", "--reboot", "--no-boot-fallback", "--connect-timeout", faultConnect, "app-1")
	if code != 0 {
		t.Fatalf("boot deploy with reboot: exit %d", code)
	}
	summaryHas(t, out, "app-1", " ok ")
	if !strings.Contains(errOut, "app-1 [wave 1] reboot ok: booted "+v2["app-1"]) {
		t.Errorf("no reboot event:\n%s", errOut)
	}
	if n := f.lab.Host("app-1").Boots(); n != 1 {
		t.Errorf("app-1 booted %d times, want 1", n)
	}
	if n := f.lab.Host("app-2").Boots(); n != 0 {
		t.Errorf("app-2 rebooted although it was not a target")
	}
	if got := f.system("app-1"); got.active != v2["app-1"] || got.profile != v2["app-1"] {
		t.Errorf("after the reboot app-1 runs %+v, want %s", got, v2["app-1"])
	}
	if booted, _ := os.Readlink(f.lab.Host("app-1").Path("/run/booted-system")); booted != v2["app-1"] {
		t.Errorf("/run/booted-system = %s", booted)
	}
	if got := f.system("app-2"); got.active != v1["app-2"] {
		t.Errorf("app-2 changed: %+v", got)
	}
}

// A deploy's nix copy reaches a host over the deploy's own connection
// (the relay): to a host that accepts TCP and never answers, the copy
// gives up after the connect timeout instead of hanging the deploy, and
// nix copy never starts an ssh of its own to try again.
func TestNixCopyToSilentHostEnds(t *testing.T) {
	f := newFaultLab(t, 1)
	f.build()
	lh := f.lab.Host("app-1")
	cfg := transport.Config{ConnectTimeout: 2 * time.Second, KeepAlive: 2 * time.Second, KeepAliveTimeout: 6 * time.Second,
		BatchMode: true, UserConfig: "none",
		Endpoints: map[string]transport.Endpoint{"app-1": {Host: lh.Addr, Port: lh.Port, User: "root", HostKeys: []string{lh.HostKey},
			Options: map[string]string{"IdentityFile": f.lab.ClientKey}}}}
	pool, err := transport.NewPool(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	inv := &eval.Inventory{Instances: map[string]*eval.Instance{"app-1": {Name: "app-1", User: "root"}}}
	copier, err := deploy.NewNixCopier(&nixcmd.Runner{}, pool, inv, &host.Privilege{})
	if err != nil {
		t.Fatal(err)
	}
	defer copier.Close()
	silent := silence(t, lh)
	start := time.Now()
	err = copier.Copy(t.Context(), "app-1", []string{f.built("app-1")})
	t.Logf("nix copy to a silent host ended after %s: %v", time.Since(start).Round(100*time.Millisecond), err)
	if err == nil || !strings.Contains(err.Error(), "no answer within 2s") {
		t.Errorf("nix copy to a silent host: %v, want it to give up connecting after the connect timeout", err)
	}
	if n := silent.Accepted(); n != 1 {
		t.Errorf("nix copy reached the silent host %d times; want 1 (the deploy's connection)", n)
	}
}

// An activation that runs past --activation-timeout is stopped on the
// host and, with magic rollback, returns to what ran before.
func testFaultActivationTimeout(t *testing.T) {
	f := newFaultLab(t, 1)
	v1 := f.baseline()
	f.variants(map[string]string{"app-1": `version = "2"; sleep = 600;`})
	f.build()
	start := time.Now()
	code, out, _ := f.run("deploy", "--no", "build", "--activation-timeout", "2s", "--connect-timeout", faultConnect)
	took := time.Since(start)
	outcome := summaryHas(t, out, "app-1", "rolled-back", "did not finish within 2s")
	if code == 0 {
		t.Error("exit 0 after a timed-out activation")
	}
	hosts, wrong := f.expect(map[string]hostSystem{"app-1": {active: v1["app-1"], link: "system-1-link"}})
	addFaultRow(faultRow{fault: "activation past --activation-timeout", exit: code, outcome: outcome, hosts: hosts, wrong: wrong,
		badExit: code == 0, lost: f.recorded(map[string]string{"app-1": "rolled-back"}), took: took})
}

// --goal dry-activate runs switch-to-configuration dry-activate and is
// reported as such; nothing changes on the host or in hive.state.
func TestDeployDryActivate(t *testing.T) {
	f := newFaultLab(t, 1)
	v1 := f.baseline()
	before := f.state().Instances["app-1"]
	f.variants(map[string]string{"app-1": `version = "2";`})
	v2 := f.build()
	code, out, _ := f.run("deploy", "--no", "build", "--goal", "dry-activate")
	if code != 0 {
		t.Errorf("exit %d", code)
	}
	summaryHas(t, out, "app-1", "dry-activated")
	acts, _ := os.ReadFile(f.lab.Host("app-1").Path("/run/nix-hive-test/activations"))
	if !strings.Contains(string(acts), v2["app-1"]+" dry-activate\n") {
		t.Errorf("dry-activate did not run:\n%s", acts)
	}
	if got := f.system("app-1"); got.active != v1["app-1"] || got.profile != v1["app-1"] {
		t.Errorf("dry-activate changed the host: %+v", got)
	}
	if after := f.state().Instances["app-1"]; after != before {
		t.Errorf("hive.state recorded a dry activation: %+v (was %+v)", after, before)
	}
}

// Where systemd runs, the job is a transient unit (systemd-run), with the
// session's PATH handed over. The lab has no systemd: a stand-in
// systemd-run checks the arguments nix-hive gives it and starts the
// command the way a unit starts, in a clean environment of only what
// --setenv passes, detached.
func TestDeployThroughSystemdRun(t *testing.T) {
	f := newFaultLab(t, 1)
	v1 := f.baseline()
	h := f.lab.Host("app-1")
	if err := os.MkdirAll(h.Path("/run/systemd/system"), 0o755); err != nil {
		t.Fatal(err)
	}
	standIn := `#!/bin/sh
# systemd-run stand-in: what a transient service gets
log=/run/nix-hive-test/systemd-run.log
mkdir -p /run/nix-hive-test
echo "$*" >> $log
env=
while [ $# -gt 0 ]; do
  case $1 in
  --unit=*|--collect|--quiet|--no-ask-password|--service-type=exec) ;;
  --setenv=*) env="$env ${1#--setenv=}" ;;
  --) shift; break ;;
  -*) echo "unexpected option $1" >> $log; exit 1 ;;
  *) break ;;
  esac
  shift
done
env -i $env setsid "$@" </dev/null >/dev/null 2>&1 &
`
	if err := os.WriteFile(filepath.Join(h.Root, "bin", "systemd-run"), []byte(standIn), 0o755); err != nil {
		t.Fatal(err)
	}
	f.variants(map[string]string{"app-1": `version = "2";`})
	v2 := f.build()
	code, out, _ := f.run("deploy", "--no", "build", "--connect-timeout", faultConnect)
	if code != 0 {
		t.Fatalf("deploy through systemd-run: exit %d", code)
	}
	summaryHas(t, out, "app-1", " ok ")
	log, _ := os.ReadFile(h.Path("/run/nix-hive-test/systemd-run.log"))
	if !strings.Contains(string(log), "--unit=nix-hive-") || !strings.Contains(string(log), "--setenv=PATH=") || strings.Contains(string(log), "unexpected") {
		t.Errorf("systemd-run was not used as expected:\n%s", log)
	}
	if got := f.system("app-1"); got.active != v2["app-1"] || got.active == v1["app-1"] {
		t.Errorf("app-1 runs %+v, want %s", got, v2["app-1"])
	}
}

// bashAsSh makes bash h's sh (first on its PATH, started as sh as NixOS
// starts it) and puts a timeout before the real one; both note their
// arguments. What it returns reads the notes: the shells bash ran as sh,
// and what timeout bounded.
func bashAsSh(t *testing.T, h *lab.Host) func() (shells, timeouts []string) {
	t.Helper()
	const shNotes, timeoutNotes = "/run/nix-hive-test/sh", "/run/nix-hive-test/timeout"
	for name, script := range map[string]string{
		"sh":      "#!/bin/bash\nmkdir -p /run/nix-hive-test\nprintf '%s\\n' \"$*\" >>" + shNotes + "\nexec -a sh /bin/bash \"$@\"\n",
		"timeout": "#!/bin/sh\nmkdir -p /run/nix-hive-test\nprintf '%s\\n' \"$*\" >>" + timeoutNotes + "\nexec /usr/bin/timeout \"$@\"\n",
	} {
		if err := os.WriteFile(filepath.Join(h.Root, "bin", name), []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return func() (shells, timeouts []string) {
		read := func(p string) []string {
			b, _ := os.ReadFile(h.Path(p))
			return strings.Split(strings.TrimSpace(string(b)), "\n")
		}
		return read(shNotes), read(timeoutNotes)
	}
}
