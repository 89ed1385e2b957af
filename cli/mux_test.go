package cli_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// viaMux is the -v line of a command that went through a holder.
var viaMux = regexp.MustCompile(`ssh: through mux pid (\d+): (\d+) new connections, (\d+) sessions, (\d+) hosts' state read`)

// muxCost is what a command cost the hosts through the holder: the
// connections the holder made for it and the sessions it opened.
func muxCost(t *testing.T, stderr string) (conns, sessions int) {
	t.Helper()
	n := muxCounts(t, stderr)
	return n[0], n[1]
}

// muxReads is how many hosts' state the holder read for a command.
func muxReads(t *testing.T, stderr string) int {
	t.Helper()
	return muxCounts(t, stderr)[2]
}

// muxCounts are the numbers of a command's viaMux line.
func muxCounts(t *testing.T, stderr string) [3]int {
	t.Helper()
	m := viaMux.FindStringSubmatch(stderr)
	if m == nil {
		t.Fatalf("the command did not go through the holder (no %q line)", viaMux)
	}
	var n [3]int
	for i := range n {
		n[i], _ = strconv.Atoi(m[i+2])
	}
	return n
}

// TestMux starts a holder with mux start and runs status and deploy
// through it on real hosts: status reads over the held sftp sessions and
// a no-op deploy takes no lock, neither costing a host a connection or a
// session; a deploy lock held by someone else is still honoured; a
// change activates and is confirmed over a new connection; a cut
// connection is redialed; --no-mux and mux stop go back to connecting
// directly.
func TestMux(t *testing.T) {
	t.Setenv("XDG_RUNTIME_DIR", t.TempDir()) // the holder's socket, inherited by the holder
	f := newFaultLab(t, 3)
	if code, _, _ := f.run("deploy"); code != 0 {
		t.Fatalf("first deploy: exit %d", code)
	}
	v1 := f.built("app-1")
	code, out, _ := f.run("mux", "start", "--idle", "0")
	if code != 0 || !strings.Contains(out, "holds 3 connections (3 of 3 targets connected)") {
		t.Fatalf("mux start: exit %d, %q", code, out)
	}
	t.Cleanup(func() { f.run("mux", "stop") })

	code, out, errOut := f.run("-v", "status")
	if c, s := muxCost(t, errOut); code != 0 || c != 0 || s != 0 {
		t.Errorf("status: exit %d, %d connections and %d sessions; want 0, 0, 0", code, c, s)
	}
	for _, h := range []string{"app-1", "app-2", "app-3"} {
		if !regexp.MustCompile(`(?m)^` + h + `\s.*` + regexp.QuoteMeta(f.built(h)) + `\s+ok\s*$`).MatchString(out) {
			t.Errorf("status does not show %s ok on %s", h, f.built(h))
		}
	}

	code, _, errOut = f.run("-v", "deploy")
	if c, s := muxCost(t, errOut); code != 0 || c != 0 || s != 0 || muxReads(t, errOut) != 3 {
		t.Errorf("no-op deploy: exit %d, %d connections, %d sessions and %d state reads; want 0, 0, 0, 3", code, c, s, muxReads(t, errOut))
	}

	// Another deploy holds app-2: its lock and its owner file.
	h2 := f.lab.Host("app-2")
	lock, err := os.OpenFile(h2.Path("/run/nix-hive/deploy.lock"), os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(h2.Path("/run/nix-hive/deploy.owner"), []byte("alice@box (test)\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, errOut = f.run("deploy")
	if code == 0 || !strings.Contains(out+errOut, "alice@box (test)") {
		t.Errorf("deploy of a host another deploy holds: exit %d, holder not named", code)
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_UN); err != nil {
		t.Fatal(err)
	}
	// The owner file stays, as after a deploy cut off from the host: the
	// next deploy takes the lock to find out, and removes it on release.
	code, _, errOut = f.run("-v", "deploy")
	if _, s := muxCost(t, errOut); code != 0 || s != 1 {
		t.Errorf("deploy after the lock was freed: exit %d, %d sessions; want 0 and 1 (app-2's lock)", code, s)
	}
	if _, err := os.Stat(h2.Path("/run/nix-hive/deploy.owner")); !os.IsNotExist(err) {
		t.Errorf("deploy.owner after the deploy released the lock: %v", err)
	}

	f.variants(map[string]string{"app-1": `version = "2";`})
	code, _, errOut = f.run("-v", "deploy")
	v2 := f.built("app-1")
	if c, _ := muxCost(t, errOut); code != 0 || v2 == v1 || f.system("app-1").active != v2 || c == 0 {
		t.Errorf("deploy of a change: exit %d, app-1 runs %s (want %s), %d new connections (the confirmation needs one)",
			code, f.system("app-1").active, v2, c)
	}
	// hive.state says app-1 runs v1: reading that it does would not spare
	// its lock, so only app-2 and app-3 are read.
	if n := muxReads(t, errOut); n != 2 {
		t.Errorf("deploy of a change read %d hosts' state; want 2", n)
	}
	for _, h := range []string{"app-2", "app-3"} {
		if got := f.system(h).active; got != f.built(h) {
			t.Errorf("%s runs %s; want %s", h, got, f.built(h))
		}
	}

	if n, err := f.lab.Host("app-3").Faults().CutConnections(); n == 0 || err != nil {
		t.Fatalf("cut app-3's connections: %d, %v", n, err)
	}
	code, _, errOut = f.run("-v", "status")
	if c, _ := muxCost(t, errOut); code != 0 || c != 1 {
		t.Errorf("status after a cut: exit %d, %d new connections; want 0 and 1", code, c)
	}

	direct := regexp.MustCompile(`ssh: 3 connections \(3 direct`)
	code, _, errOut = f.run("-v", "status", "--no-mux")
	if code != 0 || !direct.MatchString(errOut) || viaMux.MatchString(errOut) {
		t.Errorf("status --no-mux: exit %d, did not connect directly", code)
	}

	code, out, _ = f.run("mux", "check")
	if code != 0 || !strings.Contains(out, "holds 3 connections") {
		t.Errorf("mux check: exit %d, %q", code, out)
	}
	code, out, _ = f.run("mux", "stop")
	if code != 0 || !strings.Contains(out, "stopped pid") {
		t.Errorf("mux stop: exit %d, %q", code, out)
	}
	if code, _, _ = f.run("mux", "check"); code != 1 {
		t.Errorf("mux check after stop: exit %d, want 1", code)
	}
	socks, _ := filepath.Glob(filepath.Join(os.Getenv("XDG_RUNTIME_DIR"), "nix-hive", "*.sock"))
	if len(socks) != 0 {
		t.Errorf("sockets left after stop: %q", socks)
	}
	code, _, errOut = f.run("-v", "status")
	if code != 0 || !direct.MatchString(errOut) {
		t.Errorf("status after stop: exit %d, did not connect directly", code)
	}
}

// TestMuxPersist runs commands with the default --mux-persist, as an
// operator who changed no setting does: the first starts a holder (and
// returns while it runs on), the next ones go through it at no new
// connection, a holder that was killed is replaced, and a deploy of a
// change through it activates.
func TestMuxPersist(t *testing.T) {
	t.Setenv("XDG_RUNTIME_DIR", t.TempDir())
	f := newFaultLab(t, 2)
	if code, _, _ := f.run("deploy", "--mux-persist", "0"); code != 0 {
		t.Fatalf("first deploy: exit %d", code)
	}
	defaultPersist(t)
	t.Cleanup(func() { f.run("mux", "stop") })

	// A process of its own, whose output is a pipe: it ends although the
	// holder it started runs on, so the holder does not hold that pipe.
	r := f.startProcess("-v", "status")
	code := r.wait()
	pid := startedHolder(t, r.stderr.String())
	if c, s := muxCost(t, r.stderr.String()); code != 0 || c != 2 || s != 0 {
		t.Errorf("first status: exit %d, %d new connections and %d sessions; want 0, 2, 0", code, c, s)
	}
	for _, h := range []string{"app-1", "app-2"} {
		if !regexp.MustCompile(`(?m)^` + h + `\s.*` + regexp.QuoteMeta(f.built(h)) + `\s+ok\s*$`).MatchString(r.stdout.String()) {
			t.Errorf("first status does not show %s ok on %s", h, f.built(h))
		}
	}
	if err := syscall.Kill(pid, 0); err != nil {
		t.Fatalf("holder pid %d after the command ended: %v", pid, err)
	}

	code, out, errOut := f.run("-v", "status")
	if c, s := muxCost(t, errOut); code != 0 || c != 0 || s != 0 || strings.Contains(errOut, "started connection holder") {
		t.Errorf("next status: exit %d, %d new connections and %d sessions, or a holder started; want 0, 0, 0", code, c, s)
	}
	if !strings.Contains(out, f.built("app-2")) {
		t.Errorf("next status does not show app-2's system")
	}
	code, out, _ = f.run("--json", "mux", "check")
	var holders []struct {
		Pid   int  `json:"pid"`
		Stale bool `json:"stale"`
		Info  struct {
			Idle string `json:"idle_timeout"`
		} `json:"info"`
	}
	if err := json.Unmarshal([]byte(out), &holders); code != 0 || err != nil || len(holders) != 1 || holders[0].Pid != pid || holders[0].Info.Idle != "10m0s" || holders[0].Stale {
		t.Errorf("mux check --json: exit %d, %+v (%v); want one holder, pid %d, idle 10m0s, current", code, holders, err, pid)
	}
	// --mux-persist 0 starts none, but a running holder still serves.
	code, _, errOut = f.run("-v", "status", "--mux-persist", "0")
	if c, _ := muxCost(t, errOut); code != 0 || c != 0 {
		t.Errorf("status --mux-persist 0: exit %d, %d new connections; want 0, 0", code, c)
	}

	// A holder killed outright leaves its socket; the next command starts
	// another in its place.
	waitKilled(t, pid)
	code, _, errOut = f.run("-v", "status")
	if next := startedHolder(t, errOut); code != 0 || next == pid {
		t.Errorf("status after the holder was killed: exit %d, holder pid %d (the killed one was %d)", code, next, pid)
	}

	f.variants(map[string]string{"app-1": `version = "2";`})
	code, _, errOut = f.run("-v", "deploy")
	if c, _ := muxCost(t, errOut); code != 0 || f.system("app-1").active != f.built("app-1") || c == 0 {
		t.Errorf("deploy of a change: exit %d, app-1 runs %s (want %s), %d new connections (the confirmation needs one)",
			code, f.system("app-1").active, f.built("app-1"), c)
	}
}

var startedRE = regexp.MustCompile(`nix-hive: mux: started connection holder pid (\d+); it keeps this hive's connections until 10m0s pass unused`)

// startedHolder is the pid of the holder the command says it started.
func startedHolder(t *testing.T, stderr string) int {
	t.Helper()
	m := startedRE.FindStringSubmatch(stderr)
	if m == nil {
		t.Fatalf("the command started no holder (no %q line)", startedRE)
	}
	pid, _ := strconv.Atoi(m[1])
	return pid
}

// waitKilled kills pid with SIGKILL and returns once it has exited, told
// by its pidfd (it is not this process's child to wait for).
func waitKilled(t *testing.T, pid int) {
	t.Helper()
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0); err != nil {
		t.Fatal(err)
	}
	waitExited(t, pid)
}

// A holder belongs to its hive. Editing the hive makes mux check call it
// stale, and the next command retires it: it lets go of the socket, ends
// once the command still using it is done, and a new holder serves the
// hive as it is now. mux check lists both meanwhile, mux stop stops both,
// and a holder that ends leaves nothing in the socket directory; the
// probes commands make leave nothing in its log either.
func TestMuxBelongsToTheHive(t *testing.T) {
	run := t.TempDir()
	t.Setenv("XDG_RUNTIME_DIR", run)
	f := newFaultLab(t, 2)
	defaultPersist(t)
	t.Cleanup(func() { f.run("mux", "stop", "--all") })
	sockets := filepath.Join(run, "nix-hive")

	_, _, errOut := f.run("run", "*", "--", "true")
	first := startedHolder(t, errOut)
	for range 3 {
		if code, _, errOut := f.run("run", "*", "--", "true"); code != 0 || strings.Contains(errOut, "started connection holder") {
			t.Fatalf("run through the holder: exit %d", code)
		}
	}
	logs, _ := filepath.Glob(filepath.Join(sockets, "*.log"))
	if len(logs) != 1 {
		t.Fatalf("logs in the socket directory: %v; want the holder's one", logs)
	}
	if b, _ := os.ReadFile(logs[0]); strings.Contains(string(b), "handshake") {
		t.Errorf("the probes of commands are in the holder's log:\n%s", b)
	}

	// A command through the holder that runs until told to end.
	app1 := f.lab.Host("app-1")
	busy := f.startProcess("run", "app-1", "--", "sh", "-c", "touch /run/busy; while [ ! -e /run/busy-go ]; do sleep 0.05; done")
	waitUntil(t, "the command through the holder to run on app-1", func() bool {
		_, err := os.Stat(app1.Path("/run/busy"))
		return err == nil
	})

	// The hive changes: another login name for app-2.
	editFile(t, filepath.Join(f.dir, "hive.nix"), `instances = builtins.mapAttrs (n: v: v // { system = n; }) lab;`,
		`instances = builtins.mapAttrs (n: v: v // { system = n; }) lab // { app-2 = lab.app-2 // { system = "app-2"; user = "root"; port = 22; }; app-3 = lab.app-2 // { system = "app-2"; }; };`)
	code, out, _ := f.run("mux", "check")
	if code != 0 || !strings.Contains(out, "pid "+strconv.Itoa(first)) || !strings.Contains(out, "the hive changed since it started") {
		t.Errorf("mux check after the hive changed: exit %d, want pid %d named as stale:\n%s", code, first, out)
	}
	_, _, errOut = f.run("run", "*", "--", "true")
	second := startedHolder(t, errOut)
	code, out, _ = f.run("mux", "check")
	if code != 0 || !strings.Contains(out, "pid "+strconv.Itoa(second)+" (current)") || !strings.Contains(out, "pid "+strconv.Itoa(first)+" (retired") {
		t.Errorf("mux check with a retired holder still in use: exit %d, want %d current and %d retired:\n%s", code, second, first, out)
	}
	if err := os.WriteFile(app1.Path("/run/busy-go"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if code := busy.wait(); code != 0 {
		t.Errorf("the command that used the retired holder: exit %d", code)
	}
	waitExited(t, first) // the retired holder ends with its last command
	code, out, _ = f.run("mux", "check")
	if code != 0 || strings.Contains(out, "pid "+strconv.Itoa(first)) {
		t.Errorf("mux check after the retired holder ended: exit %d:\n%s", code, out)
	}

	// mux stop stops every holder of the hive, and they leave nothing.
	if code, out, _ := f.run("mux", "stop"); code != 0 || !strings.Contains(out, "stopped pid "+strconv.Itoa(second)) {
		t.Errorf("mux stop: exit %d:\n%s", code, out)
	}
	if left, _ := os.ReadDir(sockets); len(left) != 0 {
		var names []string
		for _, e := range left {
			names = append(names, e.Name())
		}
		t.Errorf("left in the socket directory after mux stop: %v", names)
	}
	if code, _, _ := f.run("mux", "check"); code != 1 {
		t.Errorf("mux check with no holder: exit %d, want 1", code)
	}
}

// A command that connects to no host starts no holder: a plan of a hive
// with no instances, or whose every host is unreachable, leaves none.
func TestMuxOnlyWhenConnected(t *testing.T) {
	run := t.TempDir()
	t.Setenv("XDG_RUNTIME_DIR", run)
	f := newFaultLab(t, 1)
	defaultPersist(t)
	t.Cleanup(func() { f.run("mux", "stop", "--all") })
	empty := t.TempDir()
	writeFile(t, filepath.Join(empty, "hive.nix"), `{ systems = { }; instances = { }; }`)
	if code, _, errOut := runIn(t, empty, "plan"); code != 0 || strings.Contains(errOut, "started connection holder") {
		t.Errorf("plan of a hive with no instances: exit %d, or a holder started", code)
	}
	if err := f.lab.Host("app-1").Stop(); err != nil {
		t.Fatal(err)
	}
	if code, _, _ := f.run("plan", "--connect-timeout", faultConnect); code != 1 {
		t.Errorf("plan with its only host down: exit %d, want 1", code)
	}
	if holders, _ := filepath.Glob(filepath.Join(run, "nix-hive", "*.json")); len(holders) != 0 {
		t.Errorf("holders left after commands that reached no host: %v", holders)
	}
}

// defaultPersist lets the commands of the rest of the test start a
// holder, as an operator's do (TestMain's NIX_HIVE_MUX_PERSIST=0 is put
// back afterwards).
func defaultPersist(t *testing.T) {
	t.Setenv("NIX_HIVE_MUX_PERSIST", "")
	os.Unsetenv("NIX_HIVE_MUX_PERSIST")
}

// waitExited returns once process pid (not this one's child) has exited.
func waitExited(t *testing.T, pid int) {
	t.Helper()
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return // gone already
	}
	defer unix.Close(fd)
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	if n, err := unix.Poll(fds, 120_000); n != 1 || err != nil {
		t.Fatalf("pid %d did not exit: %v", pid, err)
	}
}
