package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"

	"github.com/alecthomas/kong"

	"github.com/nix-hive/nix-hive/eval"
	"github.com/nix-hive/nix-hive/nixcmd"
	"github.com/nix-hive/nix-hive/state"
)

// Globals are the flags every command shares. Nothing here is evaluated
// until a command asks for it, so `--help` or `keygen` never runs Nix.
type Globals struct {
	Config  string           `short:"c" default:"." env:"NIX_HIVE_CONFIG" help:"Hive: a directory with flake.nix or hive.nix, or a file." type:"path"`
	State   string           `env:"NIX_HIVE_STATE" help:"State file (default: hive.state beside the hive)." type:"path"`
	No      []string         `sep:"," placeholder:"STEP" help:"Skip steps whose result is already known: build, push."`
	JSON    bool             `help:"Machine-readable output (JSON events / documents)."`
	Policy  string           `env:"NIX_HIVE_POLICY" help:"Rollout policy (default: hive.star beside the hive, if present)." type:"path"`
	Version kong.VersionFlag `help:"Print the version and exit."`

	stdout, stderr io.Writer
	stderrRaw      io.Writer       // the stderr given to Main, to detect a terminal
	abort          <-chan struct{} // closed by a second interrupt
	logMu          sync.Mutex
	log            io.Writer // where log lines go while a progress view runs
	src            *eval.Source
	ev             *eval.Evaluator
	inv            *eval.Inventory
	st             *state.File
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

var knownSteps = map[string]bool{"build": true, "push": true}

func (g *Globals) validate() error {
	for _, s := range g.No {
		if !knownSteps[s] {
			return fmt.Errorf("--no %s: unknown step (known: build, push)", s)
		}
	}
	return nil
}

// skip reports whether --no names step.
func (g *Globals) skip(step string) bool {
	for _, s := range g.No {
		if s == step {
			return true
		}
	}
	return false
}

func (g *Globals) source() (eval.Source, error) {
	if g.src == nil {
		src, err := eval.Locate(g.Config)
		if err != nil {
			return eval.Source{}, err
		}
		g.src = &src
	}
	return *g.src, nil
}

func (g *Globals) evaluator() (*eval.Evaluator, error) {
	if g.ev != nil {
		return g.ev, nil
	}
	src, err := g.source()
	if err != nil {
		return nil, err
	}
	g.ev = &eval.Evaluator{
		Src: src,
		Nix: &nixcmd.Runner{Stderr: g.stderr, Prefix: "nix: "},
	}
	return g.ev, nil
}

// inventory evaluates the hive once per run.
func (g *Globals) inventory(ctx context.Context) (*eval.Inventory, error) {
	if g.inv != nil {
		return g.inv, nil
	}
	ev, err := g.evaluator()
	if err != nil {
		return nil, err
	}
	inv, err := ev.Inventory(ctx)
	if err != nil {
		return nil, err
	}
	g.inv = inv
	return inv, nil
}

// targets evaluates the hive and resolves target patterns.
func (g *Globals) targets(ctx context.Context, patterns []string) (*eval.Inventory, []string, error) {
	inv, err := g.inventory(ctx)
	if err != nil {
		return nil, nil, err
	}
	targets, err := inv.Select(patterns)
	if err != nil {
		return nil, nil, err
	}
	return inv, targets, nil
}

func (g *Globals) statePath() (string, error) {
	if g.State != "" {
		return g.State, nil
	}
	src, err := g.source()
	if err != nil {
		return "", err
	}
	return filepath.Join(src.Dir, "hive.state"), nil
}

func (g *Globals) state() (*state.File, error) {
	if g.st != nil {
		return g.st, nil
	}
	p, err := g.statePath()
	if err != nil {
		return nil, err
	}
	st, err := state.Load(p)
	if err != nil {
		return nil, err
	}
	g.st = st
	return st, nil
}

// gcRootDir is where GC roots for built systems live: beside the state
// file, so what hive.state points at survives garbage collection.
func (g *Globals) gcRootDir() (string, error) {
	p, err := g.statePath()
	if err != nil {
		return "", err
	}
	return filepath.Join(filepath.Dir(p), ".nix-hive", "gcroots"), nil
}

// keyFile resolves signing.keyFile against the hive directory.
func (g *Globals) keyFile(inv *eval.Inventory) (string, error) {
	if inv.Signing.KeyFile == "" {
		return "", nil
	}
	src, err := g.source()
	if err != nil {
		return "", err
	}
	kf := inv.Signing.KeyFile
	if !filepath.IsAbs(kf) {
		kf = filepath.Join(src.Dir, kf)
	}
	if _, err := os.Stat(kf); err != nil {
		return "", fmt.Errorf("%s: signing.keyFile: %w (create it with `nix-hive keygen`)", src.File, err)
	}
	return kf, nil
}

// evaluatorNoHive gives access to the nix runner for commands that work
// without a hive.
func (g *Globals) evaluatorNoHive() (*eval.Evaluator, error) {
	if ev, err := g.evaluator(); err == nil {
		return ev, nil
	}
	return &eval.Evaluator{Nix: &nixcmd.Runner{Stderr: g.stderr, Prefix: "nix: "}}, nil
}
