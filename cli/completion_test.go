package cli_test

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nix-hive/nix-hive/cli"
	"github.com/nix-hive/nix-hive/internal/nixtest"
	"github.com/nix-hive/nix-hive/internal/testenv"
)

// completionScript is what `nix-hive completion SHELL` prints, written to
// a file in dir under name.
func completionScript(t *testing.T, shell, dir, name string) string {
	t.Helper()
	var stdout, stderr bytes.Buffer
	if code := cli.Main("test", []string{"completion", shell}, &stdout, &stderr); code != 0 {
		t.Fatalf("completion %s: exit %d: %s", shell, code, stderr.String())
	}
	if stderr.Len() > 0 {
		t.Fatalf("completion %s wrote to stderr: %s", shell, stderr.String())
	}
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, stdout.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestCompletionSyntax checks each script with its shell's own parser.
func TestCompletionSyntax(t *testing.T) {
	for _, c := range []struct{ shell, hint string }{
		{"bash", "apt-get install bash"},
		{"zsh", "apt-get install zsh"},
		{"fish", "apt-get install fish"},
	} {
		t.Run(c.shell, func(t *testing.T) {
			sh := testenv.Tool(t, c.shell, c.hint)
			file := completionScript(t, c.shell, t.TempDir(), "nix-hive."+c.shell)
			check := []string{"-n", file}
			if c.shell == "fish" {
				check = []string{"--no-execute", file}
			}
			if out, err := exec.Command(sh, check...).CombinedOutput(); err != nil || len(out) > 0 {
				t.Fatalf("%s %v: %v\n%s", c.shell, check, err, out)
			}
		})
	}
}

// completionEnv is a directory holding a copy of the seed hive (instances
// portico, storage, www-1..3; tags edge, storage, web, canary) and one
// without a hive, and the environment nix-hive evaluates them in.
type completionEnv struct {
	seed, empty string
	env         []string
}

func newCompletionEnv(t *testing.T) *completionEnv {
	t.Helper()
	nixtest.Require(t)
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	// The seed imports ../testsystems: keep the layout.
	for _, f := range []string{"seed/hive.nix", "testsystems/default.nix"} {
		data, err := os.ReadFile(filepath.Join(root, "examples", f))
		if err != nil {
			t.Fatal(err)
		}
		to := filepath.Join(dir, "examples", f)
		if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
			t.Fatal(err)
		}
		writeFile(t, to, string(data))
	}
	e := &completionEnv{seed: filepath.Join(dir, "examples", "seed"), empty: filepath.Join(dir, "empty")}
	if err := os.MkdirAll(e.empty, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, kv := range os.Environ() {
		// the user's hive must not stand in for the test's
		if !strings.HasPrefix(kv, "NIX_HIVE_CONFIG=") {
			e.env = append(e.env, kv)
		}
	}
	e.env = append(e.env, "XDG_CACHE_HOME="+filepath.Join(dir, "cache"), "HOME="+filepath.Join(dir, "home"),
		"XDG_CONFIG_HOME="+filepath.Join(dir, "config"), "XDG_DATA_HOME="+filepath.Join(dir, "data"))
	return e
}

// run runs name with args in dir, with the test's environment and a
// bound: a completion that hangs is a failure.
func (e *completionEnv) run(t *testing.T, dir, name string, args ...string) (stdout, stderr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir, cmd.Env = dir, e.env
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %q in %s: %v\nstdout:\n%s\nstderr:\n%s", name, args, dir, err, out.String(), errb.String())
	}
	return out.String(), errb.String()
}

// TestCompletionNames checks what the scripts call back into: the hive's
// names, from the current directory or --config, and nothing at all,
// quietly and successfully, without a hive.
func TestCompletionNames(t *testing.T) {
	e := newCompletionEnv(t)
	const instances = "portico\nstorage\nwww-1\nwww-2\nwww-3\n"
	for _, c := range []struct {
		name string
		dir  string
		args []string
		want string
	}{
		{"targets", e.seed, []string{"completion", "bash", "--complete=targets"}, instances + "@canary\n@edge\n@storage\n@web\n"},
		{"instances", e.seed, []string{"completion", "zsh", "--complete=instances"}, instances},
		{"config", e.empty, []string{"completion", "fish", "--complete=instances", "--config=" + e.seed}, instances},
		{"no hive", e.empty, []string{"completion", "bash", "--complete=targets"}, ""},
		{"missing config", e.seed, []string{"completion", "bash", "--complete=targets", "-c", filepath.Join(e.empty, "nowhere")}, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			stdout, stderr := e.run(t, c.dir, "nix-hive", c.args...)
			if stdout != c.want || stderr != "" {
				t.Errorf("nix-hive %q:\nstdout %q, want %q\nstderr %q, want none", c.args, stdout, c.want, stderr)
			}
		})
	}

	t.Run("broken hive", func(t *testing.T) {
		bad := filepath.Join(t.TempDir(), "hive.nix")
		writeFile(t, bad, "{ instances = ; }\n")
		stdout, stderr := e.run(t, e.empty, "nix-hive", "completion", "bash", "--complete=targets", "-c", bad)
		if stdout != "" || stderr != "" {
			t.Errorf("broken hive: stdout %q, stderr %q; want neither", stdout, stderr)
		}
	})
}

// completionCase is a command line completed at its end, and words the
// shell must offer (and must not) there, each as it reads on the command
// line once completed. SEED in line stands for the seed hive's directory.
type completionCase struct {
	line string
	// empty: run in a directory without a hive, so names come only from -c
	empty     bool
	want, not []string
}

var (
	seedInstances = []string{"portico", "storage", "www-1", "www-2", "www-3"}
	seedTags      = []string{"@canary", "@edge", "@storage", "@web"}
	seedTargets   = append(slices.Clone(seedInstances), seedTags...)
)

var completionCases = []completionCase{
	{line: "nix-hive de", want: []string{"deploy"}, not: []string{"build"}},
	{line: "nix-hive ", want: []string{"build", "plan", "deploy", "status", "rollback", "run", "ssh", "scp", "keys", "completion"},
		not: []string{"--config", "portico"}},
	{line: "nix-hive -", want: []string{"--config", "--json", "--help"}, not: []string{"--goal", "--no", "--policy"}},
	{line: "nix-hive deploy --g", want: []string{"--goal"}},
	{line: "nix-hive deploy --", want: []string{"--goal", "--force", "--parallel", "--config", "--accept-new-host-keys", "--magic-rollback", "--no-magic-rollback"}},
	{line: "nix-hive deploy --goal ", want: []string{"switch", "boot", "test", "dry-activate"}, not: []string{"www-1"}},
	{line: "nix-hive deploy --goal=b", want: []string{"--goal=boot"}, not: []string{"--goal=switch"}},
	{line: "nix-hive deploy ", want: seedTargets},
	{line: "nix-hive deploy --force www-1 w", want: []string{"www-2", "www-3"}, not: []string{"portico"}},
	{line: "nix-hive plan @", want: seedTags, not: []string{"portico"}},
	{line: "nix-hive build ", want: seedTargets},
	{line: "nix-hive status @w", want: []string{"@web"}, not: []string{"@edge"}},
	{line: "nix-hive rollback ", want: seedTargets},
	{line: "nix-hive keys ", want: []string{"list", "upload"}, not: []string{"portico"}},
	{line: "nix-hive keys list ", want: seedTargets},
	{line: "nix-hive keys upload --sudo doas ", want: seedTargets},
	{line: "nix-hive keys upload --p", want: []string{"--parallel"}, not: []string{"--policy"}},
	{line: "nix-hive deploy --p", want: []string{"--parallel", "--policy"}},
	{line: "nix-hive run www-1,@w", want: []string{"www-1,@web"}},
	{line: "nix-hive run ", want: seedTargets},
	{line: "nix-hive run @web -- ", not: seedTargets},
	{line: "nix-hive ssh ", want: seedInstances, not: seedTags},
	{line: "nix-hive ssh www-1 ", not: seedTargets},
	{line: "nix-hive scp ww", want: []string{"www-1:", "www-2:", "www-3:"}},
	{line: "nix-hive scp -r hive", want: []string{"hive.nix"}},
	{line: "nix-hive scp www-1:", not: []string{"www-1:"}},
	{line: "nix-hive deploy --no build,p", want: []string{"build,push"}, not: []string{"build,build"}},
	{line: "nix-hive completion ", want: []string{"bash", "zsh", "fish"}},
	{line: "nix-hive deploy ", empty: true, not: seedTargets},
	{line: "nix-hive -c SEED deploy @", empty: true, want: seedTags},
	{line: "nix-hive --config=SEED keys list ", empty: true, want: seedTargets},
	{line: "nix-hive ssh --config SEED ", empty: true, want: seedInstances},
}

// resolvedCase is a case with its directory and SEED replaced.
type resolvedCase struct {
	completionCase
	dir string
}

func (e *completionEnv) cases() []resolvedCase {
	var rs []resolvedCase
	for _, c := range completionCases {
		r := resolvedCase{completionCase: c, dir: e.seed}
		if c.empty {
			r.dir = e.empty
		}
		r.line = strings.ReplaceAll(c.line, "SEED", e.seed)
		rs = append(rs, r)
	}
	return rs
}

// checkCompletion runs each case with complete (the shell's) and checks
// what it offered.
func checkCompletion(t *testing.T, e *completionEnv, complete func(t *testing.T, dir, line string) []string) {
	for _, c := range e.cases() {
		t.Run(strings.ReplaceAll(strings.ReplaceAll(c.line, e.seed, "SEED"), "/", "_"), func(t *testing.T) {
			got := complete(t, c.dir, c.line)
			for _, w := range c.want {
				if !slices.Contains(got, w) {
					t.Errorf("%q: %q not offered; got %q", c.line, w, got)
				}
			}
			for _, w := range c.not {
				if slices.Contains(got, w) {
					t.Errorf("%q: %q offered; got %q", c.line, w, got)
				}
			}
		})
	}
}

// bashWords splits line as bash does for COMP_WORDS (with the default
// COMP_WORDBREAKS): at blanks, and around runs of : and =.
func bashWords(line string) []string {
	var words []string
	for _, f := range strings.Fields(line) {
		start := 0
		for i := 0; i <= len(f); i++ {
			if i > start && (i == len(f) || isBreak(f[i]) != isBreak(f[start])) {
				words = append(words, f[start:i])
				start = i
			}
		}
	}
	if strings.HasSuffix(line, " ") {
		words = append(words, "")
	}
	return words
}

func isBreak(b byte) bool { return b == ':' || b == '=' }

// TestCompletionBash calls the completion function as bash's programmable
// completion does (COMP_WORDS, COMP_CWORD, COMP_LINE, COMP_POINT).
func TestCompletionBash(t *testing.T) {
	bash := testenv.Tool(t, "bash", "apt-get install bash")
	e := newCompletionEnv(t)
	script := completionScript(t, "bash", t.TempDir(), "nix-hive.bash")
	const driver = `source "$1"
COMP_LINE=$2 COMP_POINT=${#2} COMP_CWORD=$3
shift 3
COMP_WORDS=("$@")
_nix_hive nix-hive "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
printf '%s\n' "${COMPREPLY[@]}"`
	checkCompletion(t, e, func(t *testing.T, dir, line string) []string {
		words := bashWords(line)
		cword := len(words) - 1
		args := append([]string{"--norc", "--noprofile", "-c", driver, "bash", script, line, strconv.Itoa(cword)}, words...)
		stdout, stderr := e.run(t, dir, bash, args...)
		if stderr != "" {
			t.Errorf("stderr: %s", stderr)
		}
		// Bash replaces only the current word's text after its last : or
		// =; put back what comes before, to compare whole words.
		field := line[strings.LastIndexByte(line, ' ')+1:]
		pre := strings.TrimSuffix(field, words[cword])
		if strings.Trim(words[cword], ":=") == "" {
			pre = field
		}
		var got []string
		for _, r := range strings.Split(strings.TrimSuffix(stdout, "\n"), "\n") {
			if r != "" {
				got = append(got, pre+r)
			}
		}
		return got
	})
}

// zshCapture drives an interactive zsh on a pseudo-terminal: compinit
// once with the script on $fpath ($1), then for each pair of directory
// and line after it: cd there, type the line and Tab. Every match that
// reaches compadd is printed between \x01 and \x02 (with its prefixes and
// suffix: the word as it would read), and \x05 ends each line's matches.
const zshCapture = `zmodload zsh/zpty || exit 3
zpty z zsh -f -i
zpty -w z "PROMPT=''; bindkey -e; fpath=(${(q)1} \$fpath); autoload -U compinit; compinit -u -D"
zpty -w z "zstyle ':completion:*' list-grouped false; zstyle ':completion:*' insert-tab false"
zpty -w z 'compadd() {
  if [[ ${@[1,(i)(-|--)]} == *-(O|A|D)\ * ]]; then builtin compadd "$@"; return; fi
  local -a __hits __suf __pre
  builtin compadd -A __hits "$@"
  zparseopts -E S:=__suf P:=__pre
  local __s=${__suf[-1]#-S} __p=${__pre[-1]#-P} __h
  for __h in $__hits; do print -r -- $'\''\x01'\''"$IPREFIX$__p$__h$__s"$'\''\x02'\''; done
  builtin compadd "$@"
}'
zpty -w z '_capture_end() { print -r -- $'\''\x01\x03\x02'\'' }'
zpty -w z 'bindkey "^I" complete-word'
shift
local out
while (( $# >= 2 )); do
  zpty -w z "cd ${(q)1} && comppostfuncs=(_capture_end)"
  zpty -n -w z "$2"$'\t'
  shift 2
  while zpty -r z out; do
    [[ $out == *$'\x01\x03\x02'* ]] && break
    [[ $out == *$'\x01'*$'\x02'* ]] && print -r -- ${${out#*$'\x01'}%$'\x02'*}
  done || exit 4
  print -r -- $'\x05'
  zpty -n -w z $'\x15'
done`

// TestCompletionZsh completes in a real interactive zsh with compinit.
func TestCompletionZsh(t *testing.T) {
	zsh := testenv.Tool(t, "zsh", "apt-get install zsh")
	e := newCompletionEnv(t)
	fpath := t.TempDir()
	completionScript(t, "zsh", fpath, "_nix-hive")
	// compinit takes seconds: one shell completes every line.
	args := []string{"-f", "-c", zshCapture, "zsh", fpath}
	for _, c := range e.cases() {
		args = append(args, c.dir, c.line)
	}
	stdout, _ := e.run(t, e.empty, zsh, args...)
	blocks := strings.Split(stdout, "\x05\n")
	if len(blocks) != len(completionCases)+1 {
		t.Fatalf("zsh completed %d lines of %d:\n%s", len(blocks)-1, len(completionCases), stdout)
	}
	got := map[string][]string{}
	for i, c := range e.cases() {
		for _, m := range strings.Split(blocks[i], "\n") {
			// _sequence's separator after a target is removed when the
			// word ends there
			if m = strings.TrimSuffix(strings.TrimSpace(m), ","); m != "" {
				got[c.dir+"\x00"+c.line] = append(got[c.dir+"\x00"+c.line], m)
			}
		}
	}
	checkCompletion(t, e, func(t *testing.T, dir, line string) []string {
		return got[dir+"\x00"+line]
	})

	t.Run("sourced", func(t *testing.T) {
		file := completionScript(t, "zsh", t.TempDir(), "nix-hive.zsh")
		prog := `autoload -U compinit && compinit -u -D && source "$1" && print -r -- $_comps[nix-hive]`
		if stdout, _ := e.run(t, e.empty, zsh, "-f", "-c", prog, "zsh", file); stdout != "_nix-hive\n" {
			t.Errorf("sourced after compinit: nix-hive completes with %q, want _nix-hive", stdout)
		}
	})
}

// TestCompletionFish completes with fish's own `complete -C`.
func TestCompletionFish(t *testing.T) {
	fish := testenv.Tool(t, "fish", "apt-get install fish")
	e := newCompletionEnv(t)
	script := completionScript(t, "fish", t.TempDir(), "nix-hive.fish")
	checkCompletion(t, e, func(t *testing.T, dir, line string) []string {
		stdout, stderr := e.run(t, dir, fish, "--no-config", "-c", `source $argv[1]; complete -C $argv[2]`, script, line)
		if stderr != "" {
			t.Errorf("stderr: %s", stderr)
		}
		var got []string
		for _, l := range strings.Split(strings.TrimSuffix(stdout, "\n"), "\n") {
			if w, _, _ := strings.Cut(l, "\t"); w != "" {
				got = append(got, w)
			}
		}
		return got
	})
}
