package keys

import (
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/nix-hive/nix-hive/eval"
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
	v := NewValues(&eval.Hive{Src: eval.Source{Dir: dir}})
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
	v := NewValues(&eval.Hive{Src: eval.Source{Dir: dir}})
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

// runWrite runs WriteProgram here, as the shell way runs it on a host.
func runWrite(t *testing.T, dest, mode, stdin string) (int, string) {
	t.Helper()
	cmd := exec.Command("sh", "-c", WriteProgram, "nix-hive", dest, strconv.Itoa(os.Getuid()), strconv.Itoa(os.Getgid()), mode)
	cmd.Stdin = strings.NewReader(stdin)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	err := cmd.Run()
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
