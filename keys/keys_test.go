package keys

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nix-hive/nix-hive/eval"
	"github.com/nix-hive/nix-hive/host"
	"github.com/nix-hive/nix-hive/internal/testenv"
	"github.com/nix-hive/nix-hive/transport"
)

func TestValuesOf(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "db.secret"), []byte("s3cret-db\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	abs := filepath.Join(t.TempDir(), "abs.secret")
	if err := os.WriteFile(abs, []byte("s3cret-abs"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		key     eval.Key
		want    string
		wantErr string // substring; the error must not hold the value
	}{
		{"relative file from the hive's directory", eval.Key{Name: "db", Source: "file", File: "db.secret"}, "s3cret-db\n", ""},
		{"absolute file", eval.Key{Name: "abs", Source: "file", File: abs}, "s3cret-abs", ""},
		{"missing file", eval.Key{Name: "gone", Source: "file", File: "no-such"}, "", "key gone: open " + filepath.Join(dir, "no-such")},
		{"argv command", eval.Key{Name: "c", Source: "command", Command: []string{"printf", "%s", "from-argv"}}, "from-argv", ""},
		{"shell command runs in the hive's directory", eval.Key{Name: "sh", Source: "command", Command: []string{"/bin/sh", "-c", "cat db.secret"}}, "s3cret-db\n", ""},
		{"failing command: exit code and last stderr line, value scrubbed", eval.Key{Name: "bad", Source: "command",
			Command: []string{"/bin/sh", "-c", "echo half-a-secret; echo noise >&2; echo failed near half-a-secret >&2; exit 4"}},
			"", "key bad: command /bin/sh exited 4: failed near <secret>"},
		{"command not found", eval.Key{Name: "nf", Source: "command", Command: []string{"nix-hive-no-such-command"}}, "", "key nf: command nix-hive-no-such-command: "},
		{"a directory is no key file", eval.Key{Name: "d", Source: "file", File: "."}, "", "key d: " + dir + " is not a regular file"},
	}
	v := NewValues(&eval.Hive{Src: eval.Source{Dir: dir}}, DefaultTimeout)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			val, err := v.Of(context.Background(), "i", &tt.key)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err %v, want one containing %q", err, tt.wantErr)
				}
				if strings.Contains(err.Error(), "half-a-secret") {
					t.Errorf("the error holds the value: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := content(t, val); got != tt.want {
				t.Errorf("got %q; want %q", got, tt.want)
			}
		})
	}
}

// content reads a value whole, as an upload would send it.
func content(t *testing.T, v *Value) string {
	t.Helper()
	r, size, err := v.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	b, err := io.ReadAll(r)
	if err != nil || int64(len(b)) != size {
		t.Fatalf("read %d of %d bytes: %v", len(b), size, err)
	}
	return string(b)
}

// A source shared by many instances is read once per run, however many
// ask at once.
func TestValuesOfRunsACommandOnce(t *testing.T) {
	dir := t.TempDir()
	k := &eval.Key{Name: "shared", Source: "command", Command: []string{"/bin/sh", "-c", "echo run >> runs; echo value"}}
	v := NewValues(&eval.Hive{Src: eval.Source{Dir: dir}}, DefaultTimeout)
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got, err := v.Of(context.Background(), "host-"+string(rune('a'+i)), k)
			if err != nil || string(got.data) != "value\n" {
				t.Errorf("host %d: %v %v", i, got, err)
			}
		}()
	}
	wg.Wait()
	runs, err := os.ReadFile(filepath.Join(dir, "runs"))
	if err != nil || string(runs) != "run\n" {
		t.Errorf("the command ran %d times, want once (%v)", strings.Count(string(runs), "run"), err)
	}
}

func TestScrub(t *testing.T) {
	tests := []struct {
		s       string
		secrets []string
		want    string
	}{
		{"bad token abcd1234 given", []string{"abcd1234"}, "bad token <secret> given"},
		{"line two: second-line", []string{"first-line\nsecond-line\n"}, "line two: <secret>"},
		{"short ab stays", []string{"ab"}, "short ab stays"},
		{"no secret here", []string{"zzzzzz"}, "no secret here"},
	}
	for _, tt := range tests {
		var secs [][]byte
		for _, s := range tt.secrets {
			secs = append(secs, []byte(s))
		}
		if got := Scrub(tt.s, secs...); got != tt.want {
			t.Errorf("Scrub(%q) = %q, want %q", tt.s, got, tt.want)
		}
	}
}

// waitFile waits for a file the command under test writes: the event a
// test acts on, never a sleep.
func waitFile(t *testing.T, p string) string {
	t.Helper()
	var b []byte
	testenv.WaitFor(t, p, func() bool {
		var err error
		b, err = os.ReadFile(p)
		return err == nil && strings.HasSuffix(string(b), "\n")
	})
	return strings.TrimSpace(string(b))
}

// waitGone waits for the processes to end: the kill that stops a key's
// command is sent before Of returns, but the kernel may take a moment.
func waitGone(t *testing.T, what string, pids ...string) {
	t.Helper()
	testenv.WaitGone(t, what, pids...)
}

// hangingKey is a command key whose shell writes its pid, starts a child
// that would run for ever (a background job, which ignores SIGINT as a
// non-interactive shell's jobs do), writes that one's pid and waits.
func hangingKey(dir string) *eval.Key {
	return &eval.Key{Name: "hang", Source: "command", Command: []string{"/bin/sh", "-c",
		"echo $$ >sh.pid; sleep 100000 & echo $! >child.pid; wait"}}
}

// Ctrl-C while a key's command runs: the error says it was interrupted
// (and is context.Canceled, so the host counts as interrupted), and the
// command's whole process group is gone, its children with it.
func TestValuesOfInterruptedCommand(t *testing.T) {
	dir := t.TempDir()
	v := NewValues(&eval.Hive{Src: eval.Source{Dir: dir}}, DefaultTimeout)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := make(chan error, 1)
	go func() {
		_, err := v.Of(ctx, "i", hangingKey(dir))
		errc <- err
	}()
	sh, child := waitFile(t, filepath.Join(dir, "sh.pid")), waitFile(t, filepath.Join(dir, "child.pid"))
	cancel()
	err := <-errc
	if err == nil || !strings.Contains(err.Error(), "key hang: command /bin/sh was interrupted") || !errors.Is(err, context.Canceled) {
		t.Errorf("err %v, want one saying the command was interrupted, and context.Canceled", err)
	}
	waitGone(t, "after the interrupt", sh, child)
}

// A command's value is held in memory (once, for every host that shares
// it), so it is bounded: output past MaxValue stops the command and fails
// the key, without the output being kept.
func TestValuesOfCommandOverLimit(t *testing.T) {
	dir := t.TempDir()
	v := NewValues(&eval.Hive{Src: eval.Source{Dir: dir}}, DefaultTimeout)
	// 256 MiB of output, then the shell would go on waiting.
	k := &eval.Key{Name: "big", Source: "command", Command: []string{"/bin/sh", "-c",
		"echo $$ >sh.pid; head -c 268435456 /dev/zero; sleep 100000 & echo $! >child.pid; wait"}}
	// A bound against a hang (a command nothing stops), not a speed
	// assertion.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	_, err := v.Of(ctx, "i", k)
	runtime.ReadMemStats(&after)
	if err == nil || !strings.Contains(err.Error(), "key big: command /bin/sh printed more than 1 MiB") {
		t.Errorf("err %v, want the limit named", err)
	}
	// Everything allocated meanwhile, garbage included: far below the
	// 256 MiB the command printed.
	alloc := after.TotalAlloc - before.TotalAlloc
	t.Logf("allocated %.1f MiB while the command printed 256 MiB", float64(alloc)/(1<<20))
	if alloc > 16<<20 {
		t.Errorf("allocated %d bytes reading a command's output: it was held, not refused", alloc)
	}
	// A pid file the shell made but had not written when it was stopped
	// (head ended by the closed pipe, the group killed just after the
	// redirection) names nothing to wait for.
	for _, f := range []string{"sh.pid", "child.pid"} {
		if b, err := os.ReadFile(filepath.Join(dir, f)); err == nil && len(bytes.TrimSpace(b)) > 0 {
			waitGone(t, "after the limit", strings.TrimSpace(string(b)))
		}
	}
}

// A key's command that runs past its timeout (the key's own, else the
// run's) is stopped with everything it started, and the error says so.
func TestValuesOfCommandTimeout(t *testing.T) {
	for _, tt := range []struct {
		name, keyTimeout string
		runTimeout       time.Duration
		want             string
	}{
		{"the run's timeout", "", time.Second, "timed out after 1s"},
		{"the key's own timeout wins", "2s", time.Hour, "timed out after 2s"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			v := NewValues(&eval.Hive{Src: eval.Source{Dir: dir}}, tt.runTimeout)
			k := hangingKey(dir)
			k.Timeout = tt.keyTimeout
			_, err := v.Of(context.Background(), "i", k)
			if err == nil || !strings.Contains(err.Error(), "key hang: command /bin/sh "+tt.want) || errors.Is(err, context.Canceled) {
				t.Errorf("err %v, want one saying the command %s (and not context.Canceled)", err, tt.want)
			}
			waitGone(t, "after the timeout", waitFile(t, filepath.Join(dir, "sh.pid")), waitFile(t, filepath.Join(dir, "child.pid")))
		})
	}
}

// A text is held in memory like a command's output, so it is bounded the
// same way.
func TestValuesOfTextLimit(t *testing.T) {
	dir := t.TempDir()
	v := NewValues(&eval.Hive{Src: eval.Source{Dir: dir}}, DefaultTimeout)
	v.texts = map[string]map[string]string{"i": {"big": strings.Repeat("x", MaxValue+1), "fits": strings.Repeat("x", MaxValue)}}
	if _, err := v.Of(context.Background(), "i", &eval.Key{Name: "big", Source: "text"}); err == nil ||
		!strings.Contains(err.Error(), "key big: its text has 1048577 bytes, more than the 1 MiB a text key may hold") {
		t.Errorf("err %v, want the limit named", err)
	}
	if _, err := v.Of(context.Background(), "i", &eval.Key{Name: "fits", Source: "text"}); err != nil {
		t.Errorf("a text of MaxValue bytes: %v", err)
	}
}

// runWrite runs the key-write program here, as the shell way runs it on a host,
// for a key of this process's user and group.
func runWrite(t *testing.T, dest, mode, stdin string) (int, string) {
	t.Helper()
	return runWriteFor(t, dest, os.Getuid(), os.Getgid(), mode, stdin)
}

// runWriteFor runs the key-write program for a key owned by uid:gid, with OPEN as
// the upload decides it.
func runWriteFor(t *testing.T, dest string, uid, gid int, mode, stdin string) (int, string) {
	t.Helper()
	m, err := strconv.ParseUint(mode, 8, 32)
	if err != nil {
		t.Fatal(err)
	}
	root := &eval.Instance{Name: "here", User: "root"}
	cmd := exec.Command("sh", "-c", host.WriteKeyCommand(root, nil, dest, uid, gid, mode, readByOthers(uid, gid, os.FileMode(m))))
	cmd.Stdin = strings.NewReader(stdin)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	err = cmd.Run()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatal(err)
	}
	return cmd.ProcessState.ExitCode(), stderr.String()
}

// The shell way's program: the value after its length line lands whole
// with its mode; one that ends short (the connection was lost half-way)
// leaves the old value; staging directories whose writer is gone are
// removed, a live one's kept (transport.StagePrefix).
func TestWriteProgram(t *testing.T) {
	dir := t.TempDir()
	dest := filepath.Join(dir, "key")
	if code, errOut := runWrite(t, dest, "0440", "5\nfirst"); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	if b, err := os.ReadFile(dest); err != nil || string(b) != "first" {
		t.Fatalf("%s: %q %v", dest, b, err)
	}
	if fi, _ := os.Stat(dest); fi.Mode().Perm() != 0o440 {
		t.Errorf("mode %v, want 0440", fi.Mode())
	}

	code, errOut := runWrite(t, dest, "0440", "100\nsecond, cut off")
	if code == 0 || !strings.Contains(errOut, "the value ended after 15 of its 100 bytes") {
		t.Errorf("a value that ends short: exit %d: %s", code, errOut)
	}
	if b, _ := os.ReadFile(dest); string(b) != "first" {
		t.Errorf("after a short value %s holds %q, want the old value", dest, b)
	}
	if code, errOut := runWrite(t, dest, "0440", "second"); code == 0 || !strings.Contains(errOut, "no length before the value") {
		t.Errorf("a value without its length: exit %d: %s", code, errOut)
	}

	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		t.Fatal(err)
	}
	boot := string(b[:8])
	ended := exec.Command("true")
	if err := ended.Run(); err != nil {
		t.Fatal(err)
	}
	entries := map[string]bool{ // name: kept
		transport.StagePrefix + boot + "-" + strconv.Itoa(os.Getpid()) + "-live":       true,
		transport.StagePrefix + boot + "-" + strconv.Itoa(ended.Process.Pid) + "-dead": false,
		transport.StagePrefix + "00000000-" + strconv.Itoa(os.Getpid()) + "-oldboot":   false,
		transport.StagePrefix + boot + "-nopid-x":                                      true,
		"unrelated": true,
	}
	for name := range entries {
		if err := os.Mkdir(filepath.Join(dir, name), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if code, errOut := runWrite(t, dest, "0400", "5\nthird"); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for name, kept := range entries {
		if _, err := os.Stat(filepath.Join(dir, name)); kept != (err == nil) {
			t.Errorf("%s: kept %v, want %v", name, err == nil, kept)
		}
	}
	if b, _ := os.ReadFile(dest); string(b) != "third" {
		t.Errorf("%s holds %q, want the third value", dest, b)
	}
	left, _ := filepath.Glob(filepath.Join(dir, ".nix-hive-*"))
	if len(left) != 2 {
		t.Errorf("left in %s: %s; want the live staging directory and the one not named as staging", dir, left)
	}
}

// Who besides root may read a key: its owner or group when not root and
// the mode lets them, or everyone.
func TestReadByOthers(t *testing.T) {
	for _, tt := range []struct {
		uid, gid int
		mode     os.FileMode
		want     bool
	}{
		{0, 0, 0o400, false},
		{0, 0, 0o440, false},
		{0, 0, 0o600, false},
		{0, 0, 0o444, true},
		{65534, 0, 0o400, true},
		{65534, 0, 0o000, false},
		{0, 65534, 0o440, true},
		{0, 65534, 0o400, false},
		{65534, 65534, 0o040, true},
	} {
		if got := readByOthers(tt.uid, tt.gid, tt.mode); got != tt.want {
			t.Errorf("readByOthers(%d, %d, %04o) = %v, want %v", tt.uid, tt.gid, tt.mode, got, tt.want)
		}
	}
}

// The shell way's directories: those it creates are 0750; a key someone
// besides root reads lets others search every root:root directory on its
// way (0751 for those it made), and nobody reads it with no other group;
// directories with an owner or group of their own are left as they are.
func TestWriteProgramKeyDirs(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("gives keys to nobody: needs root")
	}
	setpriv := testenv.Tool(t, "setpriv", "apt-get install util-linux")
	base := t.TempDir()
	if err := os.Chmod(base, 0o700); err != nil {
		t.Fatal(err)
	}
	grouped, owned := filepath.Join(base, "grouped"), filepath.Join(base, "owned")
	for dir, ids := range map[string][2]int{grouped: {0, 96}, owned: {65534, 65534}} {
		if err := os.Mkdir(dir, 0o750); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(dir, ids[0], ids[1]); err != nil {
			t.Fatal(err)
		}
	}
	perm := func(p string) os.FileMode {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		return fi.Mode().Perm()
	}
	if code, errOut := runWriteFor(t, filepath.Join(base, "root", "sub", "key"), 0, 0, "0400", "4\nroot"); code != 0 {
		t.Fatalf("root's key: exit %d: %s", code, errOut)
	}
	for p, want := range map[string]os.FileMode{base: 0o700, filepath.Join(base, "root"): 0o750, filepath.Join(base, "root", "sub"): 0o750} {
		if got := perm(p); got != want {
			t.Errorf("after root's key %s is %v, want %v", p, got, want)
		}
	}

	for _, dest := range []string{filepath.Join(base, "nobody", "sub", "key"), filepath.Join(grouped, "key"), filepath.Join(owned, "key")} {
		if code, errOut := runWriteFor(t, dest, 65534, 65534, "0440", "6\nnobody"); code != 0 {
			t.Fatalf("nobody's key %s: exit %d: %s", dest, code, errOut)
		}
	}
	for p, want := range map[string]os.FileMode{
		base: 0o701, filepath.Join(base, "nobody"): 0o751, filepath.Join(base, "nobody", "sub"): 0o751,
		filepath.Join(base, "root"): 0o750, filepath.Join(base, "root", "sub"): 0o750,
		grouped: 0o750, owned: 0o750,
	} {
		if got := perm(p); got != want {
			t.Errorf("after nobody's keys %s is %v, want %v", p, got, want)
		}
	}
	out, err := exec.Command(setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "cat", filepath.Join(base, "nobody", "sub", "key")).CombinedOutput()
	if err != nil || string(out) != "nobody" {
		t.Errorf("nobody reading its key: %q %v", out, err)
	}
	out, err = exec.Command(setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "ls", base).CombinedOutput()
	if err == nil {
		t.Errorf("nobody listed %s: %q", base, out)
	}
}
