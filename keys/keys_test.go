package keys

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/nix-hive/nix-hive/eval"
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
	}
	v := NewValues(&eval.Hive{Src: eval.Source{Dir: dir}})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := v.Of(context.Background(), "i", &tt.key)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err %v, want one containing %q", err, tt.wantErr)
				}
				if strings.Contains(err.Error(), "half-a-secret") {
					t.Errorf("the error holds the value: %v", err)
				}
				return
			}
			if err != nil || string(got) != tt.want {
				t.Errorf("got %q, %v; want %q", got, err, tt.want)
			}
		})
	}
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
			if got, err := v.Of(context.Background(), "host-"+string(rune('a'+i)), k); err != nil || string(got) != "value\n" {
				t.Errorf("host %d: %q %v", i, got, err)
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
