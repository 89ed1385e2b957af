package cli_test

import (
	"bytes"
	"context"
	"fmt"
	"github.com/nix-hive/nix-hive/shell"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/creack/pty"
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
// portico, storage, www-1..3; tags edge, storage, web, canary), one of
// testdata/completion's hive (names and tags with : = / + .), one without
// a hive, and the environment nix-hive evaluates them in.
type completionEnv struct {
	seed, tagged, empty string
	env                 []string
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
	e := &completionEnv{seed: filepath.Join(dir, "examples", "seed"), tagged: filepath.Join(dir, "examples", "tagged"),
		empty: filepath.Join(dir, "empty")}
	data, err := os.ReadFile(filepath.Join("testdata", "completion", "hive.nix"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(e.tagged, 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(e.tagged, "hive.nix"), string(data))
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
		"XDG_CONFIG_HOME="+filepath.Join(dir, "config"), "XDG_DATA_HOME="+filepath.Join(dir, "data"),
		"PATH="+memoizedNixHive(t, filepath.Join(dir, "bin"))+string(os.PathListSeparator)+os.Getenv("PATH"))
	return e
}

// memoizedNixHive puts in bin a nix-hive that runs the real one once per
// working directory, arguments and NIX_HIVE_CONFIG, and answers the same
// question again from what it said: the shells' completion functions ask
// nix-hive for the hive's names at every Tab, and each answer costs an
// evaluation of the hive, while what these tests exercise is what the
// shells make of the answers (TestCompletionNames tests the answers).
func memoizedNixHive(t *testing.T, bin string) string {
	t.Helper()
	real, err := exec.LookPath("nix-hive")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(bin, "answers"), 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(bin, "nix-hive"), fmt.Sprintf(`#!/bin/sh
key=$( { pwd; printf '%%s\n' "${NIX_HIVE_CONFIG-}" "$@"; } | sha256sum | cut -c1-32)
a=%s/answers/$key
if [ ! -e "$a.status" ]; then
  %s "$@" >"$a.out"; echo $? >"$a.status"
fi
cat "$a.out"; exit "$(cat "$a.status")"
`, shell.Quote(bin), shell.Quote(real)))
	if err := os.Chmod(filepath.Join(bin, "nix-hive"), 0o755); err != nil {
		t.Fatal(err)
	}
	return bin
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
// line once completed (quotes removed). SEED in line stands for the seed
// hive's directory.
type completionCase struct {
	line string
	// hive is the directory it runs in: the seed hive's (""), hiveTagged
	// (testdata/completion's hive), or hiveNone (no hive: names come only
	// from -c)
	hive      string
	want, not []string
	// tab, if set, is the line as bash leaves it after one Tab: the word
	// replaced by the one match and a space, or by the matches' common
	// start
	tab string
}

const (
	hiveTagged = "tagged"
	hiveNone   = "none"
)

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
	{line: "nix-hive deploy --goal=b", want: []string{"--goal=boot"}, not: []string{"--goal=switch"}, tab: "nix-hive deploy --goal=boot "},
	{line: "nix-hive deploy ", want: seedTargets},
	{line: "nix-hive deploy --force www-1 w", want: []string{"www-2", "www-3"}, not: []string{"portico"}},
	{line: "nix-hive plan @", want: seedTags, not: seedInstances, tab: "nix-hive plan @"},
	{line: "nix-hive build ", want: seedTargets},
	{line: "nix-hive status @w", want: []string{"@web"}, not: []string{"@edge"}},
	{line: "nix-hive rollback ", want: seedTargets},
	{line: "nix-hive keys ", want: []string{"list", "upload"}, not: []string{"portico"}},
	{line: "nix-hive keys list ", want: seedTargets},
	{line: "nix-hive keys upload --sudo doas ", want: seedTargets},
	{line: "nix-hive keys upload --p", want: []string{"--parallel"}, not: []string{"--policy"}},
	{line: "nix-hive deploy --p", want: []string{"--parallel", "--policy"}},
	{line: "nix-hive run www-1,@w", want: []string{"www-1,@web"}, tab: "nix-hive run www-1,@web "},
	{line: "nix-hive run ", want: seedTargets},
	{line: "nix-hive run @web -- ", not: seedTargets},
	{line: "nix-hive ssh ", want: seedInstances, not: seedTags},
	{line: "nix-hive ssh www-1 ", not: seedTargets},
	{line: "nix-hive scp ww", want: []string{"www-1:", "www-2:", "www-3:"}},
	{line: "nix-hive scp -r hive", want: []string{"hive.nix"}},
	{line: "nix-hive scp www-1:", not: []string{"www-1:"}, tab: "nix-hive scp www-1:"},
	{line: "nix-hive deploy --no build,p", want: []string{"build,push"}, not: []string{"build,build"}, tab: "nix-hive deploy --no build,push "},
	{line: "nix-hive deploy --no 'build,p", want: []string{"build,push"}, not: []string{"build,build"}, tab: "nix-hive deploy --no 'build,push' "},
	{line: "nix-hive completion ", want: []string{"bash", "zsh", "fish"}},
	{line: "nix-hive deploy ", hive: hiveNone, not: seedTargets},
	{line: "nix-hive -c SEED deploy @", hive: hiveNone, want: seedTags},
	{line: "nix-hive --config=SEED keys list ", hive: hiveNone, want: seedTargets},
	{line: "nix-hive ssh --config SEED ", hive: hiveNone, want: seedInstances},

	// bash splits words at @ (and : and =), and replaces from the @ on:
	// a tag completes as the tag, never as an instance named like it
	{line: "nix-hive deploy @w", want: []string{"@web"}, not: seedInstances, tab: "nix-hive deploy @web "},
	{line: "nix-hive status @s", want: []string{"@storage"}, not: []string{"storage"}, tab: "nix-hive status @storage "},
	{line: "nix-hive deploy --force @web @c", want: []string{"@canary"}, not: []string{"canary"}, tab: "nix-hive deploy --force @web @canary "},
	{line: "nix-hive -c SEED status @w", hive: hiveNone, want: []string{"@web"}, not: seedInstances, tab: "nix-hive -c SEED status @web "},
	{line: "nix-hive deploy w", want: []string{"www-1", "www-2", "www-3"}, not: []string{"@web"}, tab: "nix-hive deploy www-"},
	{line: "nix-hive run @w", want: []string{"@web"}, not: seedInstances, tab: "nix-hive run @web "},
	{line: "nix-hive run www-*,@w", want: []string{"www-*,@web"}, not: []string{"www-*,www-1"}, tab: "nix-hive run www-*,@web "},
	{line: "nix-hive run 'www-*,@w", want: []string{"www-*,@web"}, not: []string{"www-*,www-1"}, tab: "nix-hive run 'www-*,@web' "},
	{line: `nix-hive deploy "@s`, want: []string{"@storage"}, not: []string{"storage"}, tab: `nix-hive deploy "@storage" `},
	{line: "nix-hive deploy www-1 \\@w", want: []string{"@web"}, not: seedInstances, tab: "nix-hive deploy www-1 @web "},

	// names and tags with the other characters bash splits at
	{line: "nix-hive deploy @env=p", hive: hiveTagged, want: []string{"@env=prod"}, not: []string{"@env=staging", "prod"}, tab: "nix-hive deploy @env=prod "},
	{line: "nix-hive deploy @team:", hive: hiveTagged, want: []string{"@team:db", "@team:web"}, not: []string{"@env=prod"}, tab: "nix-hive deploy @team:"},
	{line: "nix-hive status @team:w", hive: hiveTagged, want: []string{"@team:web"}, not: []string{"@team:db", "web"}, tab: "nix-hive status @team:web "},
	{line: "nix-hive deploy @e", hive: hiveTagged, want: []string{"@env=prod", "@env=staging", "@eu/west"}, not: []string{"eu/web+1"}, tab: "nix-hive deploy @e"},
	{line: "nix-hive deploy @eu", hive: hiveTagged, want: []string{"@eu/west"}, tab: "nix-hive deploy @eu/west "},
	{line: "nix-hive deploy e", hive: hiveTagged, want: []string{"eu/web+1"}, not: []string{"@eu/west"}, tab: "nix-hive deploy eu/web+1 "},
	{line: "nix-hive deploy d", hive: hiveTagged, want: []string{"db.eu-1", "db.eu-2"}, tab: "nix-hive deploy db.eu-"},
	{line: "nix-hive run db.eu-1,@team:w", hive: hiveTagged, want: []string{"db.eu-1,@team:web"}, tab: "nix-hive run db.eu-1,@team:web "},
	{line: "nix-hive run 'db.eu-1,@env=s", hive: hiveTagged, want: []string{"db.eu-1,@env=staging"}, tab: "nix-hive run 'db.eu-1,@env=staging' "},
	{line: "nix-hive ssh e", hive: hiveTagged, want: []string{"eu/web+1"}, not: []string{"@eu/west"}, tab: "nix-hive ssh eu/web+1 "},
	{line: "nix-hive scp eu", hive: hiveTagged, want: []string{"eu/web+1:"}, tab: "nix-hive scp eu/web+1:"},
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
		switch c.hive {
		case hiveTagged:
			r.dir = e.tagged
		case hiveNone:
			r.dir = e.empty
		}
		r.line = strings.ReplaceAll(c.line, "SEED", e.seed)
		r.tab = strings.ReplaceAll(c.tab, "SEED", e.seed)
		rs = append(rs, r)
	}
	return rs
}

// checkCompletion runs each case with complete (the shell's) and checks
// what it offered.
func checkCompletion(t *testing.T, e *completionEnv, cases []resolvedCase, complete func(t *testing.T, c resolvedCase) []string) {
	for _, c := range cases {
		t.Run(strings.ReplaceAll(strings.ReplaceAll(c.line, e.seed, "SEED"), "/", "_"), func(t *testing.T) {
			got := complete(t, c)
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

// bashCapture is the rc file of an interactive bash that sources the
// script ($NH_SCRIPT) and captures what it completes. On Tab the script's
// function runs as bash calls it, and each of its replies is printed
// between \x01 and \x02 after the line before it as bash leaves it:
// readline replaces the text it passes as $2 (its word, which starts at
// the last character of COMP_WORDBREAKS, or after an open quote) with the
// reply. C-x C-p prints the line as the Tab left it, between \x01\x03 and
// \x02, and clears it. The prompt, \x1e, says bash reads the next line.
const bashCapture = `source "$NH_SCRIPT"
PS1=$'\x1e' PS2=
bind 'set bell-style none'
_nh_call() { _nix_hive "$@"; }
_nh_capture() {
	_nh_call "$@"
	local r pre=${COMP_LINE:0:COMP_POINT-${#2}}
	for r in "${COMPREPLY[@]}"; do
		printf '\1%s\2' "$pre$r"
	done
}
complete -F _nh_capture nix-hive
_nh_line() {
	printf '\1\3%s\2' "$READLINE_LINE"
	READLINE_LINE= READLINE_POINT=0
}
bind -x '"\C-x\C-p": _nh_line'
`

// bashSession is an interactive bash on a pseudo-terminal, with
// bashCapture as its rc file.
type bashSession struct {
	t      *testing.T
	tty    *os.File
	out    chan []byte // what bash writes to the terminal
	unread []byte
	n      int  // lines completed
	lost   bool // a line's completion did not end: bash cannot go on
}

// startBash starts bash in e's directory without a hive; setup runs after
// bashCapture, before the first prompt.
func (e *completionEnv) startBash(t *testing.T, bash, script, setup string) *bashSession {
	t.Helper()
	rc := filepath.Join(t.TempDir(), "rc.bash")
	writeFile(t, rc, bashCapture+setup+"\n")
	cmd := exec.Command(bash, "--noprofile", "--rcfile", rc, "-i")
	cmd.Dir = e.empty
	cmd.Env = append(slices.Clone(e.env), "NH_SCRIPT="+script, "INPUTRC=/dev/null", "HISTFILE=/dev/null", "TERM=dumb")
	tty, err := pty.StartWithSize(cmd, &pty.Winsize{Rows: 50, Cols: 500})
	if err != nil {
		t.Fatalf("bash on a pty: %v", err)
	}
	s := &bashSession{t: t, tty: tty, out: make(chan []byte)}
	stop := make(chan struct{})
	go func() {
		defer close(s.out)
		for {
			b := make([]byte, 4096)
			n, err := tty.Read(b)
			if n > 0 {
				select {
				case s.out <- b[:n]:
				case <-stop:
					return
				}
			}
			if err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() {
		close(stop)
		cmd.Process.Kill()
		cmd.Wait()
		tty.Close()
	})
	s.until("\x1e")
	return s
}

// until reads what bash writes up to mark, and returns what came before
// it. Bash that does not write mark in time (it waits for a completion
// that hangs) fails the test.
func (s *bashSession) until(mark string) string {
	s.t.Helper()
	timeout := time.After(60 * time.Second)
	for {
		if i := bytes.Index(s.unread, []byte(mark)); i >= 0 {
			before := string(s.unread[:i])
			s.unread = s.unread[i+len(mark):]
			return before
		}
		select {
		case b, ok := <-s.out:
			if !ok {
				s.lost = true
				s.t.Fatalf("bash ended before writing %q; it wrote:\n%q", mark, s.unread)
			}
			s.unread = append(s.unread, b...)
		case <-timeout:
			s.lost = true
			s.t.Fatalf("bash did not write %q in 60s; it wrote:\n%q", mark, s.unread)
		}
	}
}

// complete types line in dir and Tab, and returns the words bash was
// offered (each as it would read, without quotes) and the line as the Tab
// left it.
func (s *bashSession) complete(dir, line string) (words []string, tab string) {
	s.t.Helper()
	if s.lost {
		s.t.Fatal("bash is still busy with an earlier line")
	}
	s.n++
	// the command's mark, then the prompt after it: bash reads the line
	done := fmt.Sprintf("\x1f%d\x1f", s.n)
	fmt.Fprintf(s.tty, "cd %s && printf '\\037%%d\\037' %d\n", completionQuote(dir), s.n)
	s.until(done)
	s.until("\x1e")
	if _, err := io.WriteString(s.tty, line+"\t\x18\x10"); err != nil {
		s.t.Fatal(err)
	}
	for _, r := range strings.Split(s.until("\x01\x03"), "\x01")[1:] {
		r, _, _ = strings.Cut(r, "\x02")
		w := r[strings.LastIndexByte(r, ' ')+1:]
		words = append(words, strings.NewReplacer("'", "", `"`, "").Replace(w))
	}
	return words, s.until("\x02")
}

// completionQuote quotes s for bash.
func completionQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// TestCompletionBash completes in a real interactive bash: readline splits
// the line and calls the script's function as it does on Tab. With bash's
// default COMP_WORDBREAKS; then, for the lines whose last word bash splits
// or quotes, with a COMP_WORDBREAKS that lacks @ : = (as some users set
// it), and with the function called as bash-completion's _command_offset
// calls it (for sudo nix-hive ...): with the current word of COMP_WORDS,
// which lacks the @ that readline's keeps.
func TestCompletionBash(t *testing.T) {
	bash := testenv.Tool(t, "bash", "apt-get install bash")
	e := newCompletionEnv(t)
	script := completionScript(t, "bash", t.TempDir(), "nix-hive.bash")
	var split []resolvedCase
	for _, c := range e.cases() {
		if strings.ContainsAny(c.line[strings.LastIndexByte(c.line, ' ')+1:], `@:='"\`) {
			split = append(split, c)
		}
	}
	for _, v := range []struct {
		name, setup string
		cases       []resolvedCase
	}{
		{"default", "", e.cases()},
		{"wordbreaks", "COMP_WORDBREAKS=${COMP_WORDBREAKS//[@:=]}", split},
		{"comp_words", `_nh_call() { _nix_hive "$1" "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"; }`, split},
	} {
		t.Run(v.name, func(t *testing.T) {
			s := e.startBash(t, bash, script, v.setup)
			checkCompletion(t, e, v.cases, func(t *testing.T, c resolvedCase) []string {
				s.t = t
				words, tab := s.complete(c.dir, c.line)
				if c.tab != "" && tab != c.tab {
					t.Errorf("%q<Tab>: the line reads %q, want %q", c.line, tab, c.tab)
				}
				return words
			})
		})
	}
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
	checkCompletion(t, e, e.cases(), func(t *testing.T, c resolvedCase) []string {
		return got[c.dir+"\x00"+c.line]
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
	checkCompletion(t, e, e.cases(), func(t *testing.T, c resolvedCase) []string {
		stdout, stderr := e.run(t, c.dir, fish, "--no-config", "-c", `source $argv[1]; complete -C $argv[2]`, script, c.line)
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
