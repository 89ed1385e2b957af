package shell

import (
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/nix-hive/nix-hive/internal/testenv"
)

func TestQuote(t *testing.T) {
	tests := []struct{ in, want string }{
		{"", "''"},
		{"plain", "plain"},
		{"/nix/store/abc-x/bin/switch-to-configuration", "/nix/store/abc-x/bin/switch-to-configuration"},
		{"a b", "'a b'"},
		{"it's", `'it'\''s'`},
		{"$(touch x)", "'$(touch x)'"},
		{"`id`", "'`id`'"},
		{"a=b", "'a=b'"},
		{"~root", "'~root'"},
		{"*", "'*'"},
		{"new\nline", "'new\nline'"},
	}
	for _, tt := range tests {
		if got := Quote(tt.in); got != tt.want {
			t.Errorf("Quote(%q) = %s; want %s", tt.in, got, tt.want)
		}
	}
	if got := QuoteArgs([]string{"echo", "a b", "", "c'd"}); got != `echo 'a b' '' 'c'\''d'` {
		t.Errorf("QuoteArgs = %s", got)
	}
}

// shellPrints runs the command line with sh and returns its stdout.
func shellPrints(t *testing.T, line string) string {
	t.Helper()
	cmd := exec.Command("sh", "-c", line)
	cmd.Dir = t.TempDir() // a stray glob or redirection would show here
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=/nonexistent"}
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("sh -c %q: %v", line, err)
	}
	entries, _ := os.ReadDir(cmd.Dir)
	if len(entries) != 0 {
		t.Fatalf("sh -c %q created files", line)
	}
	return string(out)
}

// needSh skips without a POSIX sh (fails under CI).
func needSh(t testing.TB) {
	t.Helper()
	testenv.Tool(t, "sh", "a POSIX shell checks the quoting")
}

func TestQuoteArgsRoundTrip(t *testing.T) {
	needSh(t)
	args := []string{"a b", `"double"`, "'single'", "$(touch pwned)", "`touch pwned2`", "$HOME", "x;touch y", "-n", "*", "a\\b", "tab\there", "new\nline", "", "ünï"}
	got := shellPrints(t, "printf '[%s]' "+QuoteArgs(args))
	want := "[" + strings.Join(args, "][") + "]"
	if got != want {
		t.Errorf("round trip through sh:\n got %q\nwant %q", got, want)
	}
}

// FuzzQuote: sh -c "printf %s " + Quote(x) prints x exactly. Run with
// go test -fuzz FuzzQuote ./shell.
func FuzzQuote(f *testing.F) {
	needSh(f)
	for _, s := range []string{"", "a", "'", "''", `'\''`, "$(id)", "`id`", "a b", "\n", "-n", "%s", "\\", "\xff\xfe", "~", "a=b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, x string) {
		if strings.ContainsRune(x, 0) {
			t.Skip("argv cannot carry NUL")
		}
		if got := shellPrints(t, "printf %s "+Quote(x)); got != x {
			t.Errorf("sh printed %q for Quote(%q) = %s", got, x, Quote(x))
		}
	})
}
