// Package harness prepares what nix-hive's benchmark programs run: the
// nix-hive binary, a hive directory on a lab, and commands in the
// environment Nix needs here.
package harness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/nix-hive/nix-hive/lab"
)

// NixConfig is NIX_CONFIG for every process a benchmark starts: no binary
// cache is reachable from here, and waiting for one to time out would be
// measured as deploy time.
const NixConfig = "experimental-features = nix-command flakes\nsubstituters =\nwarn-dirty = false"

// Env is this process's environment with NixConfig and, when sshConfig is
// not empty, NIX_SSHOPTS pointing nix's ssh at that config. nix-hive starts
// no connection holder (a row that measures one starts it itself): each
// row measures its command alone, not what an earlier one left open.
func Env(sshConfig string) []string {
	env := append(os.Environ(), "NIX_CONFIG="+NixConfig, "NIX_HIVE_MUX_PERSIST=0")
	if sshConfig != "" {
		env = append(env, "NIX_SSHOPTS=-F "+sshConfig)
	}
	return env
}

// Check reports what this machine lacks to run the benchmarks: the lab's
// needs plus the tools a benchmark runs itself.
func Check(tools ...string) error {
	if err := lab.Check(); err != nil {
		return err
	}
	var missing []string
	for _, t := range append([]string{"go", "nix", "nix-store", "nix-build", "ssh"}, tools...) {
		if _, err := exec.LookPath(t); err != nil {
			missing = append(missing, t)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("the benchmark needs %s in PATH", strings.Join(missing, ", "))
	}
	return nil
}

// ModuleRoot is the directory of nix-hive's go.mod, found from the working
// directory as `go run ./bench/...` leaves it.
func ModuleRoot(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", fmt.Errorf("not inside a Go module: run from the nix-hive checkout (go run ./bench/...)")
	}
	data, err := os.ReadFile(gomod)
	if err != nil {
		return "", fmt.Errorf("read %s: %w", gomod, err)
	}
	if !bytes.Contains(data, []byte("module github.com/nix-hive/nix-hive\n")) {
		return "", fmt.Errorf("%s is not nix-hive's go.mod: run from the nix-hive checkout", gomod)
	}
	return filepath.Dir(gomod), nil
}

// BuildNixHive builds the nix-hive binary from the checkout at root into
// out, once, so that no case pays for compiling it.
func BuildNixHive(ctx context.Context, root, out string) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "./cmd/nix-hive")
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build ./cmd/nix-hive: %w: %s", err, bytes.TrimSpace(b))
	}
	return nil
}

// Runner runs commands, keeping each one's output in a log file under Logs
// so a failed case can be read afterwards without flooding the terminal.
type Runner struct {
	Logs string    // directory for the log files
	Env  []string  // environment of every command
	Echo io.Writer // if set, commands' output is copied here too
	// Watch, if set, is called with the pid of each command once it has
	// started; the function it returns is called when the command ends.
	Watch func(pid int) (stop func())
}

// Run runs name with args and returns its stdout. logName names the log
// file (stdout and stderr, interleaved); several commands may share one.
// The error carries the log's tail.
func (r *Runner) Run(ctx context.Context, logName string, stdin io.Reader, name string, args ...string) ([]byte, error) {
	out, _, err := r.RunState(ctx, logName, stdin, name, args...)
	return out, err
}

// RunState is Run that also returns the finished process's state (nil if
// it did not start), for what the process used: ProcessState.SysUsage.
func (r *Runner) RunState(ctx context.Context, logName string, stdin io.Reader, name string, args ...string) ([]byte, *os.ProcessState, error) {
	logPath := filepath.Join(r.Logs, logName+".log")
	f, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, nil, fmt.Errorf("log for %s: %w", name, err)
	}
	defer f.Close()
	fmt.Fprintf(f, "$ %s %s\n", name, strings.Join(args, " "))
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = r.Env
	cmd.Stdin = stdin
	// The whole process group goes when ctx ends: nix's ssh and ssh's
	// ProxyJump child would otherwise outlive an interrupted case and keep
	// the output pipes open.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	var stdout, tail bytes.Buffer
	logs := io.MultiWriter(f, &tailWriter{buf: &tail, max: 2000})
	if r.Echo != nil {
		logs = io.MultiWriter(logs, r.Echo)
	}
	cmd.Stdout = io.MultiWriter(&stdout, logs)
	cmd.Stderr = logs
	err = cmd.Start()
	if err == nil {
		stop := func() {}
		if r.Watch != nil {
			stop = r.Watch(cmd.Process.Pid)
		}
		err = cmd.Wait()
		stop()
	}
	if err != nil {
		if ctx.Err() != nil {
			return nil, cmd.ProcessState, fmt.Errorf("%s: %w", name, ctx.Err())
		}
		return stdout.Bytes(), cmd.ProcessState, fmt.Errorf("%s %s: %w (log %s): %s", name, strings.Join(args, " "), err, logPath, bytes.TrimSpace(tail.Bytes()))
	}
	return stdout.Bytes(), cmd.ProcessState, nil
}

// tailWriter keeps about the last max bytes written.
type tailWriter struct {
	buf *bytes.Buffer
	max int
}

func (t *tailWriter) Write(p []byte) (int, error) {
	t.buf.Write(p)
	if t.buf.Len() > 2*t.max {
		keep := append([]byte(nil), t.buf.Bytes()[t.buf.Len()-t.max:]...)
		t.buf.Reset()
		t.buf.Write(keep)
	}
	return len(p), nil
}

// CopyTree copies the directory src to dst (which must not exist) with
// cp -r, as the tests do with examples/.
func CopyTree(ctx context.Context, src, dst string) error {
	if out, err := exec.CommandContext(ctx, "cp", "-r", src, dst).CombinedOutput(); err != nil {
		return fmt.Errorf("cp -r %s %s: %w: %s", src, dst, err, bytes.TrimSpace(out))
	}
	return nil
}

// WriteHive writes a benchmark's hive beside a copy of the test systems
// (root's examples/testsystems, imported as ../testsystems): work/hive
// with l's lab.nix, hiveNix as hive.nix, and more files, by name; it
// returns the hive's directory.
func WriteHive(ctx context.Context, root, work string, l *lab.Lab, hiveNix string, more map[string]string) (string, error) {
	if err := CopyTree(ctx, filepath.Join(root, "examples", "testsystems"), filepath.Join(work, "testsystems")); err != nil {
		return "", err
	}
	hive := filepath.Join(work, "hive")
	if err := os.MkdirAll(hive, 0o755); err != nil {
		return "", fmt.Errorf("hive dir: %w", err)
	}
	files := map[string]string{"lab.nix": l.HiveNix(), "hive.nix": hiveNix}
	maps.Copy(files, more)
	for n, content := range files {
		if err := os.WriteFile(filepath.Join(hive, n), []byte(content), 0o644); err != nil {
			return "", fmt.Errorf("write %s: %w", n, err)
		}
	}
	return hive, nil
}

// KeygenTrusted makes the hive's signing key with bin and has every host
// of l trust it, as lib/module.nix would; it returns the public key.
func (r *Runner) KeygenTrusted(ctx context.Context, bin, hive string, l *lab.Lab) (string, error) {
	out, err := r.Run(ctx, "setup", nil, bin, "-c", hive, "keygen")
	if err != nil {
		return "", err
	}
	pub := strings.TrimSpace(string(out))
	if pub == "" || strings.ContainsAny(pub, "\n") {
		return "", fmt.Errorf("nix-hive keygen printed %q, want one public key", pub)
	}
	for _, h := range l.Hosts {
		if err := h.WriteNixConf("trusted-public-keys = " + pub); err != nil {
			return "", err
		}
	}
	return pub, nil
}

// Current is where /run/current-system points on h, "" when it does not.
func Current(h *lab.Host) string {
	p, _ := os.Readlink(h.Path("/run/current-system"))
	return p
}

// Wrong lists the hosts of l whose /run/current-system is not want(host);
// empty means every host runs what it should.
func Wrong(l *lab.Lab, want func(*lab.Host) string) []string {
	var bad []string
	for _, h := range l.Hosts {
		if got, w := Current(h), want(h); got != w {
			if got == "" {
				got = "nothing"
			}
			bad = append(bad, fmt.Sprintf("%s runs %s, want %s", h.Name, got, w))
		}
	}
	return bad
}

// MiB formats a byte count in MiB.
func MiB(n uint64) string { return fmt.Sprintf("%.1f", float64(n)/(1<<20)) }

// Workspace is a benchmark's work directory with its logs and the
// nix-hive binary it measures, and the undo steps of its setup.
type Workspace struct {
	Dir  string
	Bin  string  // nix-hive, built from the checkout
	Logs *Runner // one log per command under Dir/logs
	keep bool
	undo []func() error
}

// NewWorkspace makes a work directory (named with prefix), a log
// directory and a Runner writing there (echoing to stderr when verbose),
// and builds nix-hive from root into it. Call Cleanup also after an
// error: it undoes what was done.
func NewWorkspace(ctx context.Context, prefix, root string, keep, verbose bool) (*Workspace, error) {
	w := &Workspace{keep: keep}
	var err error
	if w.Dir, err = os.MkdirTemp("", prefix); err != nil {
		return w, fmt.Errorf("work dir: %w", err)
	}
	w.OnCleanup(func() error {
		if w.keep {
			fmt.Fprintf(os.Stderr, "work directory kept: %s\n", w.Dir)
			return nil
		}
		return os.RemoveAll(w.Dir)
	})
	logDir := filepath.Join(w.Dir, "logs")
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		return w, fmt.Errorf("work dir: %w", err)
	}
	w.Logs = &Runner{Logs: logDir, Env: Env("")}
	if verbose {
		w.Logs.Echo = os.Stderr
	}
	w.Bin = filepath.Join(w.Dir, "nix-hive")
	return w, BuildNixHive(ctx, root, w.Bin)
}

// OnCleanup adds an undo step; Cleanup runs them last first.
func (w *Workspace) OnCleanup(f func() error) { w.undo = append(w.undo, f) }

// Cleanup undoes the setup, last step first, and joins what failed.
func (w *Workspace) Cleanup() error {
	var errs []error
	for i := len(w.undo) - 1; i >= 0; i-- {
		errs = append(errs, w.undo[i]())
	}
	return errors.Join(errs...)
}

// Main runs a benchmark's run with a context that SIGINT and SIGTERM
// cancel (so its cleanup stops the lab), and exits 1 with name's error.
func Main(name string, run func(context.Context) error) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
		os.Exit(1)
	}
}
