package cli_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nix-hive/nix-hive/cli"
	"github.com/nix-hive/nix-hive/deploy"
	"github.com/nix-hive/nix-hive/internal/testenv"
	"github.com/nix-hive/nix-hive/lab"
	"github.com/nix-hive/nix-hive/lab/labtest"
	"github.com/nix-hive/nix-hive/shell"
)

// fleet is a hive over a lab whose instances carry the lab hosts' names,
// plus "odd" instances whose names need quoting everywhere.
type fleet struct {
	t   *testing.T
	lab *lab.Lab
	dir string
}

// oddName is as odd as an instance name may be (package endpoint) and
// still be scp's instance:path ("/" would make it a local path): "+" and
// a leading "_" make OpenSSH files use an alias for it. Names that would
// need quoting are refused (TestHostileHiveValuesNeverRun).
const oddName = `_it.s+odd-1`

func newFleet(t *testing.T, cfg lab.Config, odd bool) *fleet {
	l := labtest.New(t, cfg)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "lab.nix"), []byte(l.HiveNix()), 0o644); err != nil {
		t.Fatal(err)
	}
	first := l.Hosts[len(l.Hosts)-1]
	extra := ""
	if odd {
		extra = fmt.Sprintf("%q = lab.%q // { system = \"t\"; };", oddName, first.Name)
	}
	hive := fmt.Sprintf(`let lab = import ./lab.nix; in {
  systems.t.toplevel = null;
  instances = builtins.mapAttrs (n: v: v // { system = "t"; tags = [ "lab" ]; }) lab // {
    %s
  };
}`, extra)
	if err := os.WriteFile(filepath.Join(dir, "hive.nix"), []byte(hive), 0o644); err != nil {
		t.Fatal(err)
	}
	return &fleet{t: t, lab: l, dir: dir}
}

func (f *fleet) run(args ...string) (int, string, string) {
	f.t.Helper()
	var o, e bytes.Buffer
	code := cli.Main("test", append([]string{"-c", f.dir}, args...), &o, &e)
	f.t.Logf("nix-hive %q: exit %d\n--- stdout\n%s--- stderr\n%s", args, code, o.String(), e.String())
	return code, o.String(), e.String()
}

func TestRunOnTwentyHosts(t *testing.T) {
	f := newFleet(t, lab.Config{Hosts: 20}, false)
	code, out, errOut := f.run("run", "host-*", "--", "sh", "-c", "echo hello from $(hostname -I 2>/dev/null || echo x) $0", "arg0")
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	for _, h := range f.lab.Hosts {
		want := fmt.Sprintf("%-7s | hello from", h.Name)
		if !strings.Contains(out, want) {
			t.Errorf("no prefixed output for %s (%q)", h.Name, want)
		}
	}
	if strings.Count(out, "hello from") != 20 || !strings.Contains(errOut, "20 ok") {
		t.Errorf("want 20 outputs and '20 ok':\n%s\n%s", out, errOut)
	}

	// A host stopped in the middle of a run is reported; the others
	// finish. Every host says it started, then waits for its go; host-7
	// is stopped once it started, then the others get theirs.
	victim := f.lab.Host("host-7")
	stopped := make(chan error, 1)
	go func() {
		err := waitFor("host-7 to start the command", func() bool {
			_, err := os.Stat(victim.Path("/run/run-started"))
			return err == nil
		})
		if err == nil {
			err = victim.Stop()
		}
		for _, h := range f.lab.Hosts {
			if h != victim {
				if werr := os.WriteFile(h.Path("/run/run-go"), nil, 0o644); werr != nil && err == nil {
					err = werr
				}
			}
		}
		stopped <- err
	}()
	code, out, errOut = f.run("run", "host-*", "--", "sh", "-c", "touch /run/run-started; while [ ! -e /run/run-go ]; do sleep 0.05; done; echo finished")
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
	if code == 0 {
		t.Errorf("a host died during the run, exit status 0")
	}
	if strings.Count(out, "finished") != 19 || strings.Contains(out, "host-7  | finished") {
		t.Errorf("want 19 finished hosts, host-7 not among them:\n%s", out)
	}
	if !strings.Contains(errOut, "19 ok") || !strings.Contains(errOut, "host-7") {
		t.Errorf("summary does not report host-7:\n%s", errOut)
	}
	// exit statuses are summarised
	code, _, errOut = f.run("run", "host-1,host-2", "--", "sh", "-c", "exit 3")
	if code != 1 || !strings.Contains(errOut, "2 exit 3 (host-1 host-2)") {
		t.Errorf("exit %d, summary:\n%s", code, errOut)
	}
}

func TestChangedHostKeyIsRefused(t *testing.T) {
	f := newFleet(t, lab.Config{Hosts: 2}, false)
	h := f.lab.Host("host-2")
	if err := h.ReplaceHostKey(context.Background()); err != nil {
		t.Fatal(err)
	}
	marker := "/tmp/nix-hive-marker"
	for _, args := range [][]string{
		{"run", "host-2", "--", "touch", marker},
		{"ssh", "host-2", "touch", marker},
		{"scp", filepath.Join(f.dir, "hive.nix"), "host-2:" + marker},
	} {
		code, _, errOut := f.run(args...)
		if code == 0 {
			t.Errorf("%v: exit 0 with a changed host key", args)
		}
		if !strings.Contains(errOut, "does not match") || !strings.Contains(errOut, "SHA256:") {
			t.Errorf("%v: refusal does not show the fingerprint:\n%s", args, errOut)
		}
	}
	if out, err := h.Exec(context.Background(), "sh", "-c", "ls "+marker+" 2>&1 || true"); !strings.Contains(string(out), "No such file") {
		t.Errorf("something ran on the host with the changed key: %s %v", out, err)
	}
	// the unchanged host still works
	if code, _, _ := f.run("run", "host-1", "--", "true"); code != 0 {
		t.Errorf("host-1 refused too")
	}
}

func TestFleetHelpersThroughJumpHost(t *testing.T) {
	f := newFleet(t, lab.Config{Internal: 2, JumpName: "portico"}, false)
	// ssh with a command: output and exit status pass through
	code, out, _ := f.run("ssh", "int-1", "sh", "-c", "cat /etc/hostname >/dev/null 2>&1; echo via-jump; exit 7")
	if code != 7 || !strings.Contains(out, "via-jump") {
		t.Errorf("ssh through the jump host: exit %d, %q", code, out)
	}
	code, out, _ = f.run("run", "int-*", "--", "echo", "ok")
	if code != 0 || strings.Count(out, "ok") != 2 {
		t.Errorf("run through the jump host: exit %d:\n%s", code, out)
	}
	// scp there and back
	local := filepath.Join(t.TempDir(), "payload")
	writeFile(t, local, "payload")
	if err := os.Chmod(local, 0o640); err != nil {
		t.Fatal(err)
	}
	if code, _, _ := f.run("scp", local, "int-2:/tmp/payload"); code != 0 {
		t.Fatalf("scp up failed")
	}
	got, err := f.lab.Host("int-2").Exec(context.Background(), "stat", "-c", "%a %s", "/tmp/payload")
	if err != nil || strings.TrimSpace(string(got)) != "640 7" {
		t.Errorf("uploaded file on int-2: %q %v (want mode 640, 7 bytes)", got, err)
	}
	back := filepath.Join(t.TempDir(), "back")
	if code, _, _ := f.run("scp", "int-2:/tmp/payload", back); code != 0 {
		t.Fatalf("scp down failed")
	}
	if b, _ := os.ReadFile(back); string(b) != "payload" {
		t.Errorf("downloaded %q", b)
	}
	// The internal hosts are unreachable without the jump host.
	if err := dialable(f.lab.Host("int-1").Addr); err == nil {
		t.Errorf("int-1 is reachable directly; the topology is wrong")
	}
	// ssh-config agrees: OpenSSH gets there through portico too.
	// and plain OpenSSH with the generated config reaches int-1 through
	// portico, checking the pinned keys.
	code, cfg, _ := f.run("ssh-config")
	if code != 0 || !strings.Contains(cfg, "ProxyJump portico") {
		t.Fatalf("ssh-config:\n%s", cfg)
	}
	cfgFile := filepath.Join(t.TempDir(), "ssh_config")
	writeFile(t, cfgFile, cfg)
	hn, err := exec.Command("ssh", "-F", cfgFile, "-o", "BatchMode=yes", "int-1", "hostname").CombinedOutput()
	if err != nil || strings.TrimSpace(string(hn)) != "int-1" {
		t.Errorf("ssh -F <generated config> int-1 hostname: %v\n%s", err, hn)
	}
}

func TestQuotingOfNamesPathsAndArguments(t *testing.T) {
	f := newFleet(t, lab.Config{Hosts: 1}, true)
	if err := os.Remove("/tmp/pwned"); err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	args := []string{"it's", `"quoted"`, "$(touch /tmp/pwned)", "`touch /tmp/pwned`", "a  b", "; touch /tmp/pwned", "--flag"}
	code, out, _ := f.run(append([]string{"run", oddName, "--", "printf", "[%s]\n"}, args...)...)
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	for _, a := range args {
		if !strings.Contains(out, "| ["+a+"]") {
			t.Errorf("argument %q did not arrive intact:\n%s", a, out)
		}
	}
	if !strings.Contains(out, oddName+" | [it's]") {
		t.Errorf("output not prefixed with the odd instance name:\n%s", out)
	}
	// a remote path with the same characters
	local := filepath.Join(t.TempDir(), "f")
	writeFile(t, local, "x")
	remote := "/tmp/it's $(touch /tmp/pwned) `x` dir"
	if code, _, _ := f.run("ssh", oddName, "mkdir", "-p", remote); code != 0 {
		t.Fatal("mkdir failed")
	}
	if code, _, _ := f.run("scp", local, oddName+":"+remote+"/f"); code != 0 {
		t.Fatal("scp failed")
	}
	h := f.lab.Hosts[0]
	if b, err := os.ReadFile(h.Path(remote + "/f")); err != nil || string(b) != "x" {
		t.Errorf("file at the odd remote path: %q %v", b, err)
	}
	for _, where := range []string{"/tmp/pwned", h.Path("/tmp/pwned"), h.Path("/root/pwned-by-name"), "pwned-by-name"} {
		if _, err := os.Stat(where); err == nil {
			t.Errorf("%s exists: something was executed", where)
		}
	}
	if out, _ := h.Exec(context.Background(), "sh", "-c", "ls /tmp/pwned 2>&1 || true"); !strings.Contains(string(out), "No such file") {
		t.Errorf("/tmp/pwned exists on the host: something was executed")
	}
}

func dialable(addr string) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	var d netDialer
	c, err := d.DialContext(ctx, "tcp", addr+":22")
	if err == nil {
		c.Close()
	}
	return err
}

type netDialer = net.Dialer

// nix-hive ssh without a command opens an interactive shell on a remote
// pty when run from a terminal; the remote exit status passes through.
// script(1) gives it the terminal.
func TestSSHInteractivePTY(t *testing.T) {
	testenv.Tool(t, "script", "apt-get install bsdutils")
	f := newFleet(t, lab.Config{Hosts: 1}, false)
	bin := filepath.Join(t.TempDir(), "nix-hive")
	if out, err := exec.Command("go", "build", "-o", bin, "../cmd/nix-hive").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	cmd := exec.Command("script", "-qec", shell.Quote(bin)+" -c "+shell.Quote(f.dir)+" ssh host-1", "/dev/null")
	cmd.Stdin = strings.NewReader("tty && echo remote-term=$TERM; exit 5\n")
	cmd.Env = append(os.Environ(), "TERM=xterm-test")
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 5 {
		t.Errorf("exit: %v, want status 5 from the remote shell\n%s", err, out)
	}
	if !strings.Contains(string(out), "/dev/pts/") || !strings.Contains(string(out), "remote-term=xterm-test") {
		t.Errorf("no remote pty (or TERM not passed):\n%s", out)
	}
}

func TestRunTimeout(t *testing.T) {
	f := newFleet(t, lab.Config{Hosts: 2}, false)
	code, out, errOut := f.run("run", "--timeout", "1s", "host-*", "--", "sh", "-c", `case $(hostname) in host-1) sleep 30;; esac; echo quick`)
	if code == 0 {
		t.Fatal("a command that ran past --timeout counted as success")
	}
	if !strings.Contains(out, "host-2 | quick") || !strings.Contains(errOut, "1 ok") || !strings.Contains(errOut, "host-1 | nix-hive: stopped after --timeout 1s") {
		t.Errorf("host-2 should finish, host-1 time out (and say so):\n%s\n%s", out, errOut)
	}
	// The kill lands asynchronously: wait for it (bounded by the test's
	// deadline).
	waitUntil(t, "the timed-out command to be gone from host-1", func() bool {
		_, err := f.lab.Host("host-1").Exec(context.Background(), "pgrep", "-f", "^sleep 30$")
		return err != nil
	})
}

// waitUntil and waitFor are testenv's WaitFor and Eventually (the latter
// for goroutines other than the test's).
func waitUntil(t *testing.T, what string, cond func() bool) { testenv.WaitFor(t, what, cond) }

func waitFor(what string, cond func() bool) error { return testenv.Eventually(what, cond) }

// status reads a host's links as readlink does: links into the store,
// links to paths gone from it, either link alone, a profile that is no
// directory, and the profile's generation.
func TestStatusReadsHostLinks(t *testing.T) {
	f := newFleet(t, lab.Config{Hosts: 1}, false)
	h := f.lab.Host("host-1")
	const (
		a    = "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-nixos-system-a"
		b    = "/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-nixos-system-b"
		gone = "/nix/store/gggggggggggggggggggggggggggggggg-nixos-system-gone"
		file = "/nix/store/ffffffffffffffffffffffffffffffff-not-a-system"
	)
	for _, d := range []string{a, b} {
		if err := os.MkdirAll(h.Path(d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(h.Path(file), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	link := func(target, name string) {
		t.Helper()
		os.Remove(h.Path(name))
		if err := os.Symlink(target, h.Path(name)); err != nil {
			t.Fatal(err)
		}
	}
	profiles := "/nix/var/nix/profiles/"
	if err := os.MkdirAll(h.Path(profiles), 0o755); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name              string
		active, gen, prof string // link targets; "" leaves the link out
		wantActive        string
		wantGen           int
		wantProfile       string
	}{
		{"links into the store", a, b, "system-3-link", a, 3, b},
		{"active gone from the store", gone, b, "system-4-link", gone, 4, b},
		{"profile gone from the store", a, gone, "system-5-link", a, 5, ""},
		{"no system yet", "", "", "", "", 0, ""},
		{"active link only", a, "", "", a, 0, ""},
		{"profile only", "", b, "system-6-link", "", 6, b},
		{"profile that is a file", a, file, "system-7-link", a, 7, file},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			os.Remove(h.Path("/run/current-system"))
			os.Remove(h.Path(profiles + "system"))
			if tt.active != "" {
				link(tt.active, "/run/current-system")
			}
			if tt.gen != "" {
				link(tt.gen, profiles+tt.prof)
				link(tt.prof, profiles+"system")
			}
			// The shell query and --watch's sftp reads must agree.
			for _, mode := range statusModes {
				r := f.statusRow(t, mode...)
				if r.Error != "" || r.Active != tt.wantActive || r.Generation != tt.wantGen || r.Profile != tt.wantProfile {
					t.Errorf("status %q: got active %q generation %d profile %q (error %q); want %q %d %q", mode,
						r.Active, r.Generation, r.Profile, r.Error, tt.wantActive, tt.wantGen, tt.wantProfile)
				}
			}
		})
	}
}

// statusModes are the two ways status asks a host: its shell query, and
// the sftp reads of one --watch round.
var statusModes = [][]string{nil, {"--watch", "1h", "--count", "1"}}

// statusRow is the one row of status --json on a one-host fleet. The
// hive's system is not evaluated (--no build): only what the host says
// counts.
func (f *fleet) statusRow(t *testing.T, args ...string) deploy.StatusRow {
	t.Helper()
	_, out, _ := f.run(append([]string{"--json", "status", "--no", "build"}, args...)...)
	var rows []deploy.StatusRow
	if err := json.Unmarshal([]byte(out), &rows); err != nil || len(rows) != 1 {
		t.Fatalf("status --json %q: %v: %s", args, err, out)
	}
	return rows[0]
}

// status says an activation runs exactly while a process holds the host's
// activation lock, as a job does for its whole run (the lock taken here,
// by this process, is the same file lock the host's flock tests), and
// names the job from /run/nix-hive/current; --watch's sftp reads agree,
// also when the job's state says it ended.
func TestStatusSeesRunningActivation(t *testing.T) {
	f := newFleet(t, lab.Config{Hosts: 1}, false)
	h := f.lab.Host("host-1")
	write := func(p, content string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(h.Path(p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(h.Path(p), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("/run/nix-hive/current", "job-42\n")
	lock, err := os.OpenFile(h.Path("/run/nix-hive/activation.lock"), os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	check := func(when, want string) {
		t.Helper()
		for _, mode := range statusModes {
			if got := f.statusRow(t, mode...); got.Error != "" || got.Running != want {
				t.Errorf("%s, status %q reports running job %q (error %q), want %q", when, mode, got.Running, got.Error, want)
			}
		}
	}
	check("with the lock free", "")
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		t.Fatal(err)
	}
	check("with the lock held", "job-42")
	write("/run/nix-hive/jobs/job-42/state", "activated\n")
	check("with the lock held by an activated job", "job-42")
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_UN); err != nil {
		t.Fatal(err)
	}
	check("after the lock is released", "")
	write("/run/nix-hive/jobs/job-42/state", "done ok\n")
	check("after the job wrote its final state", "")
}

// status --watch keeps one connection per host and reads each round's
// state over one sftp session: a change made on the host between two
// rounds shows in the second, and no round after the first opens a
// connection or a session. A connection cut between two rounds is
// redialed, and the host is read over sftp again afterwards. Changes and
// cuts are made while a round's output is being written, before the next
// round can start.
func TestStatusWatch(t *testing.T) {
	f := newFleet(t, lab.Config{Hosts: 2, NoSFTP: []string{"host-2"}}, false)
	const (
		a = "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-nixos-system-a"
		b = "/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-nixos-system-b"
	)
	activate := func(target string) {
		t.Helper()
		for _, h := range f.lab.Hosts {
			if err := os.MkdirAll(h.Path(target), 0o755); err != nil {
				t.Fatal(err)
			}
			os.Remove(h.Path("/run/current-system"))
			if err := os.Symlink(target, h.Path("/run/current-system")); err != nil {
				t.Fatal(err)
			}
		}
	}
	activate(a)
	var rounds [][]deploy.StatusRow
	out := writerFunc(func(p []byte) (int, error) {
		// --json writes each round as one array, in one write.
		var rows []deploy.StatusRow
		if err := json.Unmarshal(p, &rows); err != nil {
			t.Errorf("a round is not one JSON array: %v: %s", err, p)
		}
		rounds = append(rounds, rows)
		switch len(rounds) {
		case 1:
			activate(b)
		case 2:
			if n, err := f.lab.Host("host-1").Faults().CutConnections(); n == 0 || err != nil {
				t.Errorf("cut host-1's connections: %d cut, %v", n, err)
			}
		}
		return len(p), nil
	})
	var stderr bytes.Buffer
	const n = 6
	code := cli.Main("test", []string{"-c", f.dir, "-v", "--json", "status", "--no", "build", "--watch", "1ms", "--count", fmt.Sprint(n)}, out, &stderr)
	t.Logf("stderr:\n%s", stderr.String())
	if code != 1 { // the hive's system is not evaluated: every host drifts
		t.Errorf("exit %d, want 1", code)
	}
	if len(rounds) != n {
		t.Fatalf("%d rounds printed, want %d", len(rounds), n)
	}
	for i := range rounds {
		want := b
		if i == 0 {
			want = a
		}
		for _, r := range rounds[i] {
			if r.Error != "" || r.Active != want {
				t.Errorf("round %d, %s: active %q (error %q), want %q", i+1, r.Instance, r.Active, r.Error, want)
			}
		}
	}
	// host-2, whose sshd refuses sftp: one connection, a query's session
	// per round (6). host-1: a connection and an sftp session, and after
	// the cut a second connection and sftp session, with a query in
	// between if round 3 found the dead connection before the pool did (2
	// or 3). Had the cut left host-1 on queries, rounds 3 to 6 would each
	// open a session (5).
	m := regexp.MustCompile(`ssh: 3 connections \(3 direct, 0 through jump hosts or ProxyCommand\), (\d+) sessions`).FindStringSubmatch(stderr.String())
	if m == nil || m[1] != "8" && m[1] != "9" {
		t.Errorf("want 3 connections and 8 or 9 sessions; got %q", m)
	}
}

type writerFunc func([]byte) (int, error)

func (w writerFunc) Write(p []byte) (int, error) { return w(p) }
