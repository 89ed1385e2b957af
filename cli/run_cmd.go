package cli

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nix-hive/nix-hive/deploy"
	"github.com/nix-hive/nix-hive/eval"
	"github.com/nix-hive/nix-hive/internal/cmdline"
	"github.com/nix-hive/nix-hive/shell"
	"github.com/nix-hive/nix-hive/transport"
)

// RunCmd is `nix-hive run`.
type RunCmd struct {
	Fleet
	Parallel int           `default:"32" help:"Instances at once."`
	Timeout  time.Duration `help:"Stop the command on a host after this long (e.g. 30s; default: no limit); the host counts as failed."`
	Targets  string        `arg:"" help:"Instances: a name glob or @tag glob; several separated by commas."`
	Command  []string      `arg:"" optional:"" passthrough:"" help:"The command and its arguments, after --."`
}

func (c *RunCmd) Help() string {
	return `Runs a command on every matching instance in parallel over one SSH
connection per host. Output lines are prefixed with the instance name; a
summary of exit statuses ends the run, and the exit status is 1 if any
instance failed or could not be reached.

Arguments reach the remote command exactly as given (each is quoted), so
spaces, quotes and $(...) arrive intact and run nothing. For shell syntax,
say so: nix-hive run '@web' -- sh -c 'systemctl is-active nginx || uptime'`
}

func (c *RunCmd) Run(ctx context.Context, g *Globals, h *eval.Hive, pool *transport.Pool) error {
	args := remoteCommand(c.Command)
	if len(args) == 0 {
		return cmdline.UsageError{Err: fmt.Errorf("run: give targets, then the command after --: nix-hive run TARGETS -- CMD ARGS... (got targets %q and no command)", c.Targets)}
	}
	targets, err := h.Inventory.Select(strings.Split(c.Targets, ","))
	if err != nil {
		return err
	}
	results := c.runOn(ctx, g, pool, targets, shell.QuoteArgs(args))
	if !summarizeRun(g, targets, results) {
		return cmdline.ExitError{Code: cmdline.Failure}
	}
	return nil
}

// runOn runs cmd on every target, at most --parallel at once, with each
// host's output lines prefixed by its name.
func (c *RunCmd) runOn(ctx context.Context, g *Globals, pool *transport.Pool, targets []string, cmd string) []deploy.CommandRow {
	width := 0
	for _, t := range targets {
		width = max(width, len(t))
	}
	var outMu sync.Mutex
	return deploy.RunCommand(ctx, pool, targets, cmd, c.Parallel, c.Timeout, func(name string) (io.Writer, io.Writer, func()) {
		prefix := fmt.Sprintf("%-*s | ", width, name)
		stdout := &prefixWriter{w: g.stdout, mu: &outMu, prefix: prefix}
		stderr := &prefixWriter{w: g.stderr, mu: &outMu, prefix: prefix}
		return stdout, stderr, func() { stdout.Flush(); stderr.Flush() }
	})
}

// summarizeRun prints why hosts failed and a line of exit statuses; it
// reports whether every host exited 0.
func summarizeRun(g *Globals, targets []string, results []deploy.CommandRow) bool {
	width := 0
	for _, t := range targets {
		width = max(width, len(t))
	}
	var ok, unreachable []string
	failed := map[string][]string{}
	for i, t := range targets {
		switch r := results[i]; {
		case r.Err != nil:
			unreachable = append(unreachable, t)
			fmt.Fprintf(g.stderr, "%-*s | nix-hive: %v\n", width, t, r.Err)
		case r.Code != 0:
			k := fmt.Sprintf("exit %d", r.Code)
			failed[k] = append(failed[k], t)
		default:
			ok = append(ok, t)
		}
	}
	fmt.Fprintf(g.stderr, "nix-hive run: %d ok", len(ok))
	for _, k := range slices.Sorted(maps.Keys(failed)) {
		fmt.Fprintf(g.stderr, ", %d %s (%s)", len(failed[k]), k, strings.Join(failed[k], " "))
	}
	if len(unreachable) > 0 {
		fmt.Fprintf(g.stderr, ", %d failed to run (%s)", len(unreachable), strings.Join(unreachable, " "))
	}
	fmt.Fprintln(g.stderr)
	return len(ok) == len(targets)
}

// prefixWriter writes whole lines, each prefixed, so parallel hosts'
// output never interleaves within a line.
type prefixWriter struct {
	w      io.Writer
	mu     *sync.Mutex
	prefix string
	buf    bytes.Buffer
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	p.buf.Write(b)
	for {
		i := bytes.IndexByte(p.buf.Bytes(), '\n')
		if i < 0 {
			break
		}
		line := p.buf.Next(i + 1)
		p.mu.Lock()
		_, err := fmt.Fprintf(p.w, "%s%s", p.prefix, line)
		p.mu.Unlock()
		if err != nil {
			return len(b), err
		}
	}
	return len(b), nil
}

// Flush writes a last line that had no newline.
func (p *prefixWriter) Flush() {
	if p.buf.Len() > 0 {
		p.mu.Lock()
		fmt.Fprintf(p.w, "%s%s\n", p.prefix, p.buf.String())
		p.mu.Unlock()
		p.buf.Reset()
	}
}
