package cli

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"

	"github.com/alecthomas/kong"

	"github.com/nix-hive/nix-hive/eval"
)

// Globals are the flags every command shares, and the program's output.
type Globals struct {
	Config  string           `short:"c" default:"." env:"NIX_HIVE_CONFIG" help:"Hive: a directory with flake.nix or hive.nix, or a file." type:"path"`
	State   string           `env:"NIX_HIVE_STATE" help:"State file (default: hive.state beside the hive)." type:"path"`
	JSON    bool             `help:"Machine-readable output (JSON events / documents)."`
	Verbose bool             `short:"v" help:"Say more: every host of a large plan, the Nix command lines behind errors, the SSH connections and sessions a command used."`
	Version kong.VersionFlag `help:"Print the version and exit."`
	// Where Nix says "use --show-trace", it names this flag (providers.go).
	ShowTrace bool `help:"Show Nix's full trace of an error in evaluating the hive."`

	stdout, stderr io.Writer
	stdin          io.Reader       // answers to questions (deploy --confirm)
	stderrRaw      io.Writer       // the stderr given to Main, to detect a terminal
	abort          <-chan struct{} // closed by a second interrupt
	logMu          sync.Mutex
	log            io.Writer // where log lines go while a progress view runs
	closers        []func()  // what providers opened, closed when the command ends
}

// logWriter is where log lines go: above the progress bar while one is
// shown, else stderr.
func (g *Globals) logWriter() io.Writer {
	g.logMu.Lock()
	defer g.logMu.Unlock()
	if g.log != nil {
		return g.log
	}
	return g.stderr
}

func (g *Globals) setLogWriter(w io.Writer) {
	g.logMu.Lock()
	g.log = w
	g.logMu.Unlock()
}

// Steps is the --no flag of the commands that build, push or upload: only
// those show it in their help.
type Steps struct {
	No []string `sep:"," placeholder:"STEP" help:"Skip steps whose result is already known: build, push, keys."`
}

var knownSteps = []string{"build", "push", "keys"}

// AfterApply checks the steps named.
func (s *Steps) AfterApply() error {
	for _, n := range s.No {
		if !slices.Contains(knownSteps, n) {
			return fmt.Errorf("--no %s: unknown step (known: %s)", n, strings.Join(knownSteps, ", "))
		}
	}
	return nil
}

// skip reports whether --no names step.
func (s *Steps) skip(step string) bool { return slices.Contains(s.No, step) }

// paths is how a command finds systems' paths: as it would (build, or
// only evaluate), or from hive.state with --no build.
func (s *Steps) paths(mode eval.PathMode) eval.PathMode {
	if s.skip("build") {
		return eval.Reuse
	}
	return mode
}

// Rollout is the --policy flag of the commands that order a rollout.
type Rollout struct {
	Policy string `env:"NIX_HIVE_POLICY" help:"Rollout policy (default: hive.star beside the hive, if present)." type:"path"`
}

// AfterApply makes the flag available to the policy's provider.
func (r *Rollout) AfterApply(kctx *kong.Context) error {
	kctx.Bind(r)
	return nil
}

// warnf tells the operator something that does not stop the command.
// Every warning nix-hive prints goes through here (eval's too, through
// eval.Open), so that they read alike and scripts can find them.
func (g *Globals) warnf(format string, args ...any) {
	fmt.Fprintf(g.stderr, "nix-hive: warning: "+format+"\n", args...)
}

// onClose registers what to do when the command ends.
func (g *Globals) onClose(f func()) { g.closers = append(g.closers, f) }

func (g *Globals) close() {
	for i := len(g.closers) - 1; i >= 0; i-- {
		g.closers[i]()
	}
}
