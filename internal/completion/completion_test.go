package completion

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/alecthomas/kong"

	"github.com/nix-hive/nix-hive/internal/testenv"
)

// toy is a grammar unlike nix-hive's where nix-hive's has no example: its
// hive flag has no short spelling, and a command takes a flag that may be
// repeated and one that is negated another way. (nix-hive's own scripts
// are driven in real shells by cli's tests.)
type toy struct {
	Config string `type:"path" help:"The hive."`
	Deploy struct {
		Targets []string `arg:"" optional:"" help:"Targets."`
		Color   string   `enum:"auto,never" default:"auto" help:"When to color."`
		Tag     []string `short:"t" help:"Tags."`
		Wait    bool     `negatable:"nowait" help:"Wait. For the [end]."`
	} `cmd:"" help:"Deploy them. More after."`
	Ssh struct {
		Instance string   `arg:"" help:"One instance."`
		Command  []string `arg:"" optional:"" passthrough:"" help:"Command."`
	} `cmd:"" help:"Log in."`
}

var toyOptions = Options{Args: map[string]Kind{"targets": Targets, "instance": Instance}, Config: "config"}

func toyScript(t *testing.T, shell string) string {
	t.Helper()
	parser, err := kong.New(&toy{}, kong.Name("nix-hive"))
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if err := Write(&b, shell, parser.Model.Node, toyOptions); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "nix-hive."+shell)
	if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestToySyntax checks each script of the toy grammar with its shell's
// own parser.
func TestToySyntax(t *testing.T) {
	for _, shell := range []string{"bash", "zsh", "fish"} {
		t.Run(shell, func(t *testing.T) {
			sh := testenv.Tool(t, shell, "apt-get install "+shell)
			check := []string{"-n", toyScript(t, shell)}
			if shell == "fish" {
				check[0] = "--no-execute"
			}
			if out, err := exec.Command(sh, check...).CombinedOutput(); err != nil || len(out) > 0 {
				t.Fatalf("%s %v: %v\n%s", shell, check, err, out)
			}
		})
	}
}

// fakeNixHive puts on PATH a nix-hive that answers every question about
// names with "www-1" and "@web", and writes its arguments to the file it
// returns.
func fakeNixHive(t *testing.T) (env []string, argsFile string) {
	t.Helper()
	bin := t.TempDir()
	argsFile = filepath.Join(bin, "args")
	fake := "#!/bin/sh\nprintf '%s\\n' \"$@\" >" + argsFile + "\nprintf 'www-1\\n@web\\n'\n"
	if err := os.WriteFile(filepath.Join(bin, "nix-hive"), []byte(fake), 0o755); err != nil {
		t.Fatal(err)
	}
	return append(os.Environ(), "PATH="+bin+string(os.PathListSeparator)+os.Getenv("PATH")), argsFile
}

// TestToyConfig: without a short spelling of the hive flag, the scripts
// still pass on the hive that its long spelling names, given either way.
func TestToyConfig(t *testing.T) {
	complete := map[string]func(sh, script, line string) *exec.Cmd{
		"bash": func(sh, script, line string) *exec.Cmd {
			// bash passes the word it replaces: here, the line's last
			return exec.Command(sh, "--norc", "-c", `source "$1"; COMP_LINE=$2 COMP_POINT=${#2}; _nix_hive nix-hive "${2##* }"; printf '%s\n' "${COMPREPLY[@]}"`,
				"bash", script, line)
		},
		"fish": func(sh, script, line string) *exec.Cmd {
			return exec.Command(sh, "--no-config", "-c", `source $argv[1]; complete -C $argv[2]`, script, line)
		},
	}
	for _, shell := range []string{"bash", "fish"} {
		t.Run(shell, func(t *testing.T) {
			sh := testenv.Tool(t, shell, "apt-get install "+shell)
			script := toyScript(t, shell)
			for _, c := range []struct{ line, want, args string }{
				{"nix-hive --config=/h deploy @", "@web", "completion\n" + shell + "\n--complete=targets\n--config=/h\n"},
				{"nix-hive --config /h ssh w", "www-1", "completion\n" + shell + "\n--complete=instances\n--config=/h\n"},
				{"nix-hive deploy --wait w", "www-1", "completion\n" + shell + "\n--complete=targets\n"},
			} {
				env, argsFile := fakeNixHive(t)
				cmd := complete[shell](sh, script, c.line)
				cmd.Env = env
				out, err := cmd.Output()
				if err != nil {
					t.Fatalf("%q: %v", c.line, err)
				}
				if got := strings.Fields(string(out)); len(got) == 0 || got[0] != c.want {
					t.Errorf("%q: offered %q, want %q", c.line, out, c.want)
				}
				if args, err := os.ReadFile(argsFile); err != nil || string(args) != c.args {
					t.Errorf("%q: asked nix-hive with %q (%v), want %q", c.line, args, err, c.args)
				}
			}
		})
	}
}

func TestWriteUnknownShell(t *testing.T) {
	parser, err := kong.New(&toy{}, kong.Name("nix-hive"))
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if err := Write(&b, "tcsh", parser.Model.Node, toyOptions); err == nil || b.Len() > 0 {
		t.Errorf("tcsh: error %v, wrote %q; want an error and nothing written", err, b.String())
	}
}

func TestNames(t *testing.T) {
	hive := func() map[string][]string {
		return map[string][]string{"www-2": {"web"}, "db": nil, "www-1": {"web", "canary"}}
	}
	for _, c := range []struct {
		kind    string
		hive    func() map[string][]string
		want    string
		unknown bool
	}{
		{kind: "targets", hive: hive, want: "db\nwww-1\nwww-2\n@canary\n@web\n"},
		{kind: "instances", hive: hive, want: "db\nwww-1\nwww-2\n"},
		{kind: "targets", hive: func() map[string][]string { return nil }, want: ""},
		{kind: "tags", unknown: true},
	} {
		var b bytes.Buffer
		looked := false
		err := Names(&b, c.kind, func() map[string][]string {
			looked = true
			if c.hive == nil {
				return nil
			}
			return c.hive()
		})
		if c.unknown {
			if !errors.Is(err, ErrUnknownKind) || looked || b.Len() > 0 {
				t.Errorf("%s: error %v, looked at the hive %v, wrote %q; want ErrUnknownKind, no look, nothing", c.kind, err, looked, b.String())
			}
			continue
		}
		if err != nil || b.String() != c.want {
			t.Errorf("%s: %q, %v; want %q", c.kind, b.String(), err, c.want)
		}
	}
}
