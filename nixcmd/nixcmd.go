package nixcmd

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Features are enabled on every call: users' nix.conf often lacks them and
// nix-hive should not require editing it.
const Features = "nix-command flakes"

// Runner starts nix processes.
type Runner struct {
	// Stderr receives nix's progress and build logs, each line prefixed
	// with Prefix. nil discards them (the tail is still kept for errors).
	Stderr io.Writer
	Prefix string
	// Env is added to the process environment (KEY=VALUE).
	Env []string
	// Config lines appended to NIX_CONFIG (e.g. "substituters =").
	Config []string
	// Verbose puts the command line into errors; without it an error is
	// what Nix said, which is what a user can act on.
	Verbose bool
	// ShowTrace turns on Nix's show-trace setting: an evaluation error
	// comes with the full trace of what was being evaluated, kept whole
	// in the error (up to traceMax). It is set in NIX_CONFIG, which every
	// release reads for every command, so calls that evaluate nothing
	// take it too.
	ShowTrace bool
	// TraceHint, if set, is how the user of the program running nix
	// turns ShowTrace on ("nix-hive --show-trace"). Errors name it where
	// Nix advises its own --show-trace, which that user cannot pass.
	TraceHint string
	// Observe, when set, sees every finished process (for benchmarks:
	// peak memory and CPU time from ProcessState.SysUsage).
	Observe func(args []string, ps *os.ProcessState)
}

// Error is a failed nix invocation with the tail of what it printed.
type Error struct {
	Args   []string
	Err    error
	Stderr string
	// Verbose: the message starts with the command line.
	Verbose bool
	// TraceHint replaces --show-trace in Nix's advice (Runner.TraceHint).
	TraceHint string
}

func (e *Error) Error() string {
	msg := strings.TrimSpace(e.Stderr)
	// Nix prints build logs before the error; the part from the first
	// "error:" on is what explains the failure.
	if i := strings.Index(msg, "error:"); i > 0 {
		msg = msg[i:]
	}
	if msg == "" {
		msg = e.Args[0] + ": " + e.Err.Error()
	}
	if e.TraceHint != "" {
		// "(use '--show-trace' to show detailed location information)"
		// up to 2.18, "(stack trace truncated; use '--show-trace' to
		// show the full, detailed trace)" since.
		msg = strings.ReplaceAll(msg, "--show-trace", e.TraceHint)
	}
	if !e.Verbose {
		return msg
	}
	return fmt.Sprintf("%s: %s", strings.Join(e.Args, " "), msg)
}

func (e *Error) Unwrap() error { return e.Err }

// Quiet returns a copy of r that does not stream stderr (the tail is still
// kept for errors): for calls whose chatter helps nobody, like evaluation.
func (r *Runner) Quiet() *Runner {
	c := *r
	c.Stderr = nil
	return &c
}

// Command returns an exec.Cmd for tool (nix, nix-store, nix-env ...) with
// the runner's environment; for callers that need to wire I/O themselves.
func (r *Runner) Command(ctx context.Context, tool string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, tool, args...)
	// nix runs ssh (nix copy), builders and substituters as children: in a
	// process group of its own they all end with it when ctx ends, and a
	// child that keeps the output pipes open cannot hold Wait forever.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error {
		return syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
	}
	cmd.WaitDelay = 5 * time.Second
	cmd.Env = append(os.Environ(), r.Env...)
	conf := os.Getenv("NIX_CONFIG")
	lines := append([]string{"extra-experimental-features = " + Features}, r.Config...)
	if r.ShowTrace {
		lines = append(lines, "show-trace = true")
	}
	if conf != "" {
		conf += "\n"
	}
	cmd.Env = append(cmd.Env, "NIX_CONFIG="+conf+strings.Join(lines, "\n"))
	return cmd
}

// Run runs tool with args and returns its stdout. Stderr is streamed to
// r.Stderr and its last lines are kept for the error.
func (r *Runner) Run(ctx context.Context, tool string, args ...string) ([]byte, error) {
	cmd := r.Command(ctx, tool, args...)
	var stdout bytes.Buffer
	cmd.Stdout = &stdout
	tail := &tailWriter{max: 4096}
	if r.ShowTrace {
		tail.max = traceMax
	}
	pr, pw := io.Pipe()
	cmd.Stderr = pw
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64*1024), 1024*1024)
		// From Nix's first "error:" on, lines go only into the returned
		// error, so that it is printed once.
		failing := false
		for sc.Scan() {
			line := sc.Text()
			tail.WriteLine(line)
			failing = failing || strings.HasPrefix(line, "error:")
			if r.Stderr != nil && !failing && !noise(line) {
				fmt.Fprintf(r.Stderr, "%s%s\n", r.Prefix, line)
			}
		}
		io.Copy(io.Discard, pr)
	}()
	err := cmd.Run()
	pw.Close()
	wg.Wait()
	if r.Observe != nil && cmd.ProcessState != nil {
		r.Observe(cmd.Args, cmd.ProcessState)
	}
	if err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%v)", ctx.Err(), err)
		}
		return stdout.Bytes(), &Error{Args: append([]string{tool}, args...), Err: err, Stderr: tail.String(), Verbose: r.Verbose, TraceHint: r.TraceHint}
	}
	return stdout.Bytes(), nil
}

// JSON runs tool and decodes its stdout into v.
func (r *Runner) JSON(ctx context.Context, v any, tool string, args ...string) error {
	out, err := r.Run(ctx, tool, args...)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(out, v); err != nil {
		return fmt.Errorf("%s %s: decode output: %w", tool, strings.Join(args, " "), err)
	}
	return nil
}

// noise reports lines that only confuse users of nix-hive: nix-hive keeps
// its own GC roots, so nix-store's advice to add one does not apply, and
// signing what is already signed is nothing to report.
func noise(line string) bool {
	return strings.Contains(line, "you did not specify '--add-root'") || strings.TrimSpace(line) == "added 0 signatures"
}

// traceMax is how much of Nix's output an error keeps with ShowTrace: a
// NixOS module's trace runs to tens of KiB (Nix 2.8 repeats recursive
// frames; later releases count them), and the error must keep its
// first line, which 2.8 prints before the trace.
const traceMax = 1 << 20

// tailWriter keeps the last max bytes of complete lines.
type tailWriter struct {
	mu  sync.Mutex
	buf []byte
	max int
}

func (t *tailWriter) WriteLine(line string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, line...)
	t.buf = append(t.buf, '\n')
	if len(t.buf) > t.max {
		cut := len(t.buf) - t.max
		if i := bytes.IndexByte(t.buf[cut:], '\n'); i >= 0 {
			cut += i + 1
		}
		t.buf = append([]byte(nil), t.buf[cut:]...)
	}
}

func (t *tailWriter) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.buf)
}

var nixEscaper = strings.NewReplacer(`\`, `\\`, `"`, `\"`, "${", `\${`, "\n", `\n`, "\r", `\r`, "\t", `\t`)

// String quotes s as a Nix string literal, for the few places that must
// write Nix code (an --apply expression, generated hive fragments).
func String(s string) string {
	return `"` + nixEscaper.Replace(s) + `"`
}
