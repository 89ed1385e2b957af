package starlark

import (
	"bufio"
	"context"
	"encoding/gob"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// A policy runs in a process of its own, the policy evaluator, and never
// in nix-hive's: a Starlark step cannot be interrupted (l + l, "x" * n and
// sorted(l) are one step each, and one can ask for gigabytes or run for
// minutes), so only a process can be stopped in the middle of one. The
// evaluator watches its own memory and exits when the policy holds more
// than Env.MaxMemory (server.watch), and nix-hive watches its resident
// memory from outside (proc.watch). nix-hive answers the builtins that
// reach out (ctx.run, http_get, sleep, log), stops a call at its time
// limit and, if the call is inside one long step, abandons it and kills
// the process once no other call runs in it. Nothing a policy computes
// comes back but indices, settings and messages of bounded size.
//
// One process serves every call of a policy running at once (checks of
// hundreds of hosts run concurrently): the memory limit is for all of
// them together, and passing it stops all of them.

const (
	// stopGrace is how long a call stopped at its time limit (or by its
	// caller) gets to unwind before it is abandoned. The interpreter stops
	// at its next step, so this is only reached inside one long step.
	stopGrace = 200 * time.Millisecond
	// idleExit is how long an evaluator with no call waits for the next
	// before it exits; a later call starts a new one.
	idleExit = 5 * time.Second
	// maxLogBytes bounds the log() output a CheckResult keeps (maxLogs
	// lines at most too); Env.Log still gets every line.
	maxLogBytes = 256 << 10
	// maxLogs bounds CheckResult.Logs.
	maxLogs = 1000
	// residentInterval is how often nix-hive reads an evaluator's resident
	// memory (see proc.watch).
	residentInterval = 2 * time.Millisecond
	// residentSlack is an evaluator's own anonymous memory before it runs
	// a policy (a few MiB; more under the race detector).
	residentSlack = 32 << 20
)

var errAbandoned = errors.New("a builtin ignored the cancellation and was abandoned")

// evaluator starts and holds the evaluator processes of one policy file.
type evaluator struct {
	file string
	src  []byte
	// overMemory is set once a call passed the memory limit: the policy is
	// broken and the rollout stops (Policy.ShouldStop).
	overMemory atomic.Bool

	mu   sync.Mutex
	cur  *proc // where new calls go; nil when none runs
	last *proc // the most recently started, for tests
}

// proc is one evaluator process.
type proc struct {
	ev      *evaluator
	loading chan struct{} // closed when the file has loaded, or failed to
	loadErr error

	// Guarded by ev.mu.
	inflight int
	retired  bool // takes no new calls; killed when the last one returns
	exiting  bool // retired because it exits by itself (memory limit)
	idle     *time.Timer

	cmd    *exec.Cmd
	wmu    sync.Mutex
	enc    *gob.Encoder
	stderr head
	ended  chan struct{} // closed when the process has been waited for

	mu     sync.Mutex
	calls  map[uint64]*invocation
	nextID uint64
	exited bool   // the process is gone; calls has been emptied
	memory bool   // the policy passed the memory limit: it said so, or watch saw it
	peak   uint64 // the most memory the policy held, as it said
	maxRSS uint64 // its peak resident size, as the kernel says (0 if unknown)
}

// invocation is nix-hive's side of one policy call.
type invocation struct {
	p     *Policy
	fn    string // "" while loading
	inst  string // the instance a check runs for, "" otherwise
	limit time.Duration

	parent context.Context // the caller's
	ctx    context.Context // ends at the call's time limit
	done   chan *outcome   // room for one: the call's only outcome
	busy   sync.WaitGroup  // requests being answered

	mu       sync.Mutex
	logs     []string
	logBytes int
	logsFull bool
}

func (p *Policy) newInvocation(fn string, limit time.Duration, inst string) *invocation {
	return &invocation{p: p, fn: fn, inst: inst, limit: limit, done: make(chan *outcome, 1)}
}

// load starts the policy's first evaluator and loads the file in it.
func (ev *evaluator) load(ctx context.Context, p *Policy) (*settings, error) {
	pr, out, err := ev.acquire(ctx, p, true)
	if err != nil {
		return nil, err
	}
	ev.release(pr)
	return &out.Settings, nil
}

// call runs f (Fn, Instances) for inv on the policy's evaluator.
func (ev *evaluator) call(ctx context.Context, inv *invocation, f frame) (*outcome, error) {
	inv.parent, inv.ctx = ctx, ctx
	if ctx.Err() != nil {
		return nil, inv.error(&outcome{}) // over before it began
	}
	pr, _, err := ev.acquire(ctx, inv.p, false)
	if err != nil {
		if ctx.Err() != nil {
			return nil, inv.error(&outcome{})
		}
		return nil, err
	}
	defer ev.release(pr)
	f.Op = opCall
	return ev.runOn(pr, inv, f)
}

// acquire returns the process for a call, starting one and loading the
// file in it when none runs; only Load (first) shows the file's log()
// output. The caller must release the process.
func (ev *evaluator) acquire(ctx context.Context, p *Policy, first bool) (*proc, *outcome, error) {
	ev.mu.Lock()
	pr := ev.cur
	starting := pr == nil || pr.over()
	if starting {
		pr = &proc{ev: ev, loading: make(chan struct{})}
		ev.cur, ev.last = pr, pr
	}
	pr.inflight++
	if pr.idle != nil {
		pr.idle.Stop()
	}
	ev.mu.Unlock()

	if starting {
		out, err := ev.start(ctx, pr, p, !first)
		pr.loadErr = err
		close(pr.loading)
		if err != nil {
			ev.retire(pr)
			ev.release(pr)
			return nil, nil, err
		}
		return pr, out, nil
	}
	select {
	case <-pr.loading:
	case <-ctx.Done():
		ev.release(pr)
		return nil, nil, ctx.Err()
	}
	if pr.loadErr != nil {
		ev.release(pr)
		return nil, nil, pr.loadErr
	}
	return pr, nil, nil
}

// start runs a new evaluator process and loads the file in it, within
// Env.CallTimeout.
func (ev *evaluator) start(ctx context.Context, pr *proc, p *Policy, quiet bool) (*outcome, error) {
	inv := p.newInvocation("", p.callTimeout(), "")
	inv.parent, inv.ctx = ctx, ctx
	if ctx.Err() != nil {
		return nil, inv.error(&outcome{})
	}
	if err := pr.spawn(p.maxMemory()); err != nil {
		return nil, fmt.Errorf("%s: %w: %w", ev.file, ErrEvaluator, err)
	}
	return ev.runOn(pr, inv, frame{Op: opLoad, File: ev.file, Src: ev.src, Quiet: quiet, MaxMemory: p.maxMemory()})
}

// runOn runs f on pr within inv's time limit.
func (ev *evaluator) runOn(pr *proc, inv *invocation, f frame) (*outcome, error) {
	ctx, cancel := context.WithTimeoutCause(inv.parent, inv.limit, ErrTimeLimit)
	defer cancel()
	inv.ctx = ctx
	f.Fn = inv.fn
	f.MaxSteps = inv.p.maxSteps()
	out := pr.run(inv, f)
	switch {
	case out.Stop == stopMemory:
		ev.overMemory.Store(true)
		ev.exiting(pr)
	case out.stuck:
		ev.retire(pr)
	}
	if out.Err != nil || out.crash != "" {
		return out, inv.error(out)
	}
	return out, nil
}

// release ends a call's use of pr. The last call out kills a retired
// process, or leaves the current one to exit after idleExit.
func (ev *evaluator) release(pr *proc) {
	ev.mu.Lock()
	defer ev.mu.Unlock()
	if pr.inflight--; pr.inflight > 0 {
		return
	}
	if pr.retired || ev.cur != pr {
		if !pr.exiting {
			pr.kill()
		}
		return
	}
	pr.idle = time.AfterFunc(idleExit, func() {
		ev.mu.Lock()
		defer ev.mu.Unlock()
		if ev.cur == pr && pr.inflight == 0 {
			ev.cur, pr.retired = nil, true
			pr.kill()
		}
	})
}

// retire sends new calls to a new process; pr is killed when its last
// call returns (at once when none runs).
func (ev *evaluator) retire(pr *proc) {
	ev.mu.Lock()
	defer ev.mu.Unlock()
	pr.retired = true
	if ev.cur == pr {
		ev.cur = nil
	}
	if pr.inflight == 0 {
		pr.kill()
	}
}

// exiting sends new calls to a new process: pr passed the memory limit
// and exits by itself once its calls have said where they stopped (and
// is killed if it has not within a second).
func (ev *evaluator) exiting(pr *proc) {
	ev.mu.Lock()
	defer ev.mu.Unlock()
	if pr.exiting {
		return
	}
	pr.retired, pr.exiting = true, true
	if ev.cur == pr {
		ev.cur = nil
	}
	time.AfterFunc(time.Second, pr.kill)
}

// stop kills the policy's evaluator and waits until it is gone. Tests use
// it; nix-hive leaves an idle evaluator to exit by itself (or with
// nix-hive, whose end closes its stdin).
func (ev *evaluator) stop() {
	ev.mu.Lock()
	pr := ev.cur
	if pr != nil {
		ev.cur, pr.retired = nil, true
		pr.kill()
	}
	ev.mu.Unlock()
	if pr != nil && pr.ended != nil {
		<-pr.ended
	}
}

// spawn starts the evaluator process: this program again, which this
// package's init turns into an evaluator (server.go), for a policy that
// may hold limit bytes.
func (pr *proc) spawn(limit uint64) error {
	registerWire()
	exe, err := executable()
	if err != nil {
		return err
	}
	cmd := exec.Command(exe)
	cmd.Args = []string{evaluatorArg0}
	cmd.Env = append(os.Environ(), evaluatorEnv+"=1")
	cmd.Stderr = &pr.stderr
	cmd.SysProcAttr = evaluatorAttr()
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	pr.mu.Lock()
	defer pr.mu.Unlock()
	pr.calls = map[uint64]*invocation{}
	pr.ended = make(chan struct{})
	if err := cmd.Start(); err != nil {
		close(pr.ended)
		pr.exited = true
		return err
	}
	pr.cmd, pr.enc = cmd, gob.NewEncoder(stdin)
	go pr.read(stdout)
	go pr.watch(cmd.Process.Pid, limit)
	return nil
}

// watch is the backstop of the evaluator's own watch (server.watch),
// which a stop of the world can hold up while a step copies a gigabyte:
// every residentInterval, it kills the evaluator if it has more than
// limit and a quarter, plus residentSlack for the Go runtime, of
// anonymous memory resident. This needs no cooperation from the
// evaluator; it works where /proc does.
func (pr *proc) watch(pid int, limit uint64) {
	tick := time.NewTicker(residentInterval)
	defer tick.Stop()
	for {
		select {
		case <-pr.ended:
			return
		case <-tick.C:
		}
		n, ok := anonResident(pid)
		if !ok {
			return
		}
		if n > limit+limit/4+residentSlack {
			pr.mu.Lock()
			pr.memory = true
			pr.mu.Unlock()
			pr.kill()
			return
		}
	}
}

// executable is this program's file; on Linux /proc/self/exe, which
// works even when the file was replaced (nix-hive upgraded) since.
func executable() (string, error) {
	if runtime.GOOS == "linux" {
		if _, err := os.Stat("/proc/self/exe"); err == nil {
			return "/proc/self/exe", nil
		}
	}
	return os.Executable()
}

func (pr *proc) kill() {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	if pr.cmd != nil && !pr.exited {
		_ = pr.cmd.Process.Kill() // an error means it has exited already
	}
}

// over reports whether pr takes no more calls.
func (pr *proc) over() bool {
	if pr.retired {
		return true
	}
	pr.mu.Lock()
	defer pr.mu.Unlock()
	return pr.exited
}

func (pr *proc) send(f frame) {
	pr.wmu.Lock()
	defer pr.wmu.Unlock()
	_ = pr.enc.Encode(f) // fails only when the process is gone, which read notices
}

// read handles the evaluator's frames until it exits, then gives every
// call still waiting the reason it ended.
func (pr *proc) read(stdout io.Reader) {
	dec := gob.NewDecoder(bufio.NewReader(stdout))
	for {
		var f frame
		if err := dec.Decode(&f); err != nil {
			break
		}
		switch f.Op {
		case opRequest:
			// A call that is over has been stopped and waits for nothing.
			if inv := pr.lookup(f.ID); inv != nil {
				inv.busy.Add(1)
				go pr.answer(inv, f)
			}
		case opLog:
			if inv := pr.lookup(f.ID); inv != nil {
				inv.log(f.Msg)
			}
		case opDone:
			pr.mu.Lock()
			inv := pr.calls[f.ID]
			delete(pr.calls, f.ID)
			pr.mu.Unlock()
			if inv != nil {
				inv.done <- f.Out
			}
		case opExit:
			pr.mu.Lock()
			pr.memory, pr.peak = true, f.Peak
			pr.mu.Unlock()
		}
	}
	_ = pr.cmd.Process.Kill() // in case it is alive and merely garbled
	_ = pr.cmd.Wait()
	pr.mu.Lock()
	pr.exited = true
	pr.maxRSS = maxRSS(pr.cmd.ProcessState)
	calls := pr.calls
	pr.calls = nil
	pr.mu.Unlock()
	for _, inv := range calls {
		inv.done <- pr.death(inv)
	}
	close(pr.ended)
}

func (pr *proc) lookup(id uint64) *invocation {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	return pr.calls[id]
}

// death is the outcome of inv when the process ended before it answered.
// Besides saying so, the evaluator may have died of a runtime limit that
// guards the same bound (an allocation the system refused, a stack past
// its maximum).
func (pr *proc) death(inv *invocation) *outcome {
	out := &outcome{Err: &Error{File: pr.ev.file, Func: inv.fn}}
	said := pr.stderr.String()
	if pr.memory || pr.cmd.ProcessState.ExitCode() == exitMemory ||
		strings.Contains(said, "out of memory") || strings.Contains(said, "stack exceeds") {
		out.Stop = stopMemory
		return out
	}
	out.crash = pr.cmd.ProcessState.String()
	if line, _, _ := strings.Cut(strings.TrimSpace(said), "\n"); line != "" {
		out.crash += ": " + line
	}
	return out
}

func (pr *proc) answer(inv *invocation, f frame) {
	defer inv.busy.Done()
	pr.send(frame{Op: opReply, ID: f.ID, Seq: f.Seq, Rep: inv.answer(f.Req)})
}

// run sends the call f and waits for its outcome. When inv's context ends
// first, it stops the call and waits stopGrace at most for the outcome.
func (pr *proc) run(inv *invocation, f frame) *outcome {
	pr.mu.Lock()
	if pr.exited {
		pr.mu.Unlock()
		return pr.death(inv)
	}
	pr.nextID++
	f.ID = pr.nextID
	pr.calls[f.ID] = inv
	pr.mu.Unlock()
	pr.send(f)

	select {
	case out := <-inv.done:
		return out
	case <-inv.ctx.Done():
	}
	why := stopTime
	if inv.parent.Err() != nil {
		why = stopCancel
	}
	pr.send(frame{Op: opCancel, ID: f.ID, Stop: why})
	grace := time.NewTimer(stopGrace)
	defer grace.Stop()
	select {
	case out := <-inv.done:
		out.abandoned = !inv.answered(grace.C)
		return out
	case <-grace.C:
		pr.mu.Lock()
		delete(pr.calls, f.ID)
		pr.mu.Unlock()
		return &outcome{Err: &Error{File: pr.ev.file, Func: inv.fn}, stuck: true}
	}
}

// answered waits until every request of inv has been answered, or until
// timeout; false means some builtin still runs.
func (inv *invocation) answered(timeout <-chan time.Time) bool {
	all := make(chan struct{})
	go func() {
		inv.busy.Wait() // ends when the last builtin returns, however late
		close(all)
	}()
	select {
	case <-all:
		return true
	case <-timeout:
		return false
	}
}

// answer does what a builtin asked of the deploy host.
func (inv *invocation) answer(r *request) *reply {
	switch r.Op {
	case "sleep":
		if err := inv.p.sleep(inv.ctx, r.Timeout); err != nil {
			return &reply{Err: err.Error()}
		}
		return &reply{}
	case "run":
		return inv.run(r)
	case "http_get":
		return inv.httpGet(r)
	}
	return &reply{Err: "unknown request " + r.Op}
}

// run is ctx.run on the check's instance through Env.Runner.
func (inv *invocation) run(r *request) *reply {
	runner := inv.p.env.Runner
	if runner == nil {
		return &reply{Err: "run: no runner configured"}
	}
	ctx := inv.ctx
	if r.HasTimeout {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, r.Timeout)
		defer cancel()
	}
	stdout, stderr, code, err := runner.Run(ctx, inv.inst, r.Cmd)
	if err != nil {
		if ctx.Err() != nil && inv.ctx.Err() == nil {
			return &reply{Err: fmt.Sprintf("run %q on %s: timed out: %v", r.Cmd, inv.inst, err)}
		}
		return &reply{Err: fmt.Sprintf("run %q on %s: %v", r.Cmd, inv.inst, err)}
	}
	return &reply{Stdout: stdout, Stderr: stderr, Code: code}
}

// httpGet is http_get through Env.HTTP; the URL was checked by the
// builtin.
func (inv *invocation) httpGet(r *request) *reply {
	ctx, cancel := context.WithTimeout(inv.ctx, r.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, r.URL, nil)
	if err != nil {
		return &reply{Err: "http_get: " + err.Error()}
	}
	client := inv.p.env.HTTP
	if client == nil {
		client = http.DefaultClient
	}
	resp, err := client.Do(req)
	if err != nil {
		return &reply{Err: "http_get: " + err.Error()}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxHTTPBody))
	if err != nil {
		return &reply{Err: fmt.Sprintf("http_get %s: read body: %v", r.URL, err)}
	}
	return &reply{Status: resp.StatusCode, Body: string(body)}
}

func (inv *invocation) log(msg string) {
	inv.mu.Lock()
	switch {
	case len(inv.logs) < maxLogs && inv.logBytes+len(msg) <= maxLogBytes:
		inv.logs = append(inv.logs, msg)
		inv.logBytes += len(msg)
	case !inv.logsFull:
		inv.logs = append(inv.logs, "(more lines went to the log only)")
		inv.logsFull = true
	}
	inv.mu.Unlock()
	if inv.p.env.Log != nil {
		inv.p.env.Log(inv.inst, msg)
	}
}

func (inv *invocation) logsCopy() []string {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	return append([]string(nil), inv.logs...)
}

// error turns a failed outcome into the call's *Error, with the reason
// when the call was stopped from outside the policy.
func (inv *invocation) error(out *outcome) *Error {
	e := &Error{File: inv.p.File, Func: inv.fn}
	if out.Err != nil {
		c := *out.Err
		e = &c
	}
	switch cause := inv.cause(out.Stop); {
	case cause != nil:
		e.Fail, e.Err, e.Msg = false, cause, inv.stopMessage(cause)
		if out.stuck {
			e.Msg += fmt.Sprintf("; it was inside one long step %s later and was abandoned", stopGrace)
		}
		if out.abandoned {
			e.Msg += "; " + errAbandoned.Error()
		}
	case out.crash != "":
		e.Err = ErrEvaluator
		e.Msg = "the policy evaluator ended unexpectedly (" + out.crash + ")"
	}
	return e
}

// cause says why the call was stopped from outside the policy, or nil.
func (inv *invocation) cause(k stopKind) error {
	switch k {
	case stopMemory:
		return ErrMemoryLimit
	case stopSteps:
		return ErrStepLimit
	}
	if inv.ctx.Err() == nil {
		return nil
	}
	if inv.parent.Err() != nil {
		return context.Cause(inv.parent)
	}
	return context.Cause(inv.ctx)
}

func (inv *invocation) stopMessage(cause error) string {
	switch {
	case errors.Is(cause, ErrMemoryLimit):
		return fmt.Sprintf("policy exceeded %s (the memory limit) and was stopped, as were its other calls running at the time", mib(inv.p.maxMemory()))
	case errors.Is(cause, ErrStepLimit):
		return fmt.Sprintf("policy exceeded %d execution steps (the limit; an endless loop?)", inv.p.maxSteps())
	case errors.Is(cause, ErrTimeLimit):
		return fmt.Sprintf("policy exceeded %s (the time limit) and was stopped", inv.limit)
	}
	return fmt.Sprintf("cancelled: %v", cause)
}

// mib formats a number of bytes in MiB.
func mib(n uint64) string {
	if n%(1<<20) == 0 {
		return fmt.Sprintf("%d MiB", n>>20)
	}
	return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
}

// head keeps the first bytes written to it: where a Go runtime says why it
// died.
type head struct {
	mu sync.Mutex
	b  []byte
}

func (h *head) Write(p []byte) (int, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.b = append(h.b, p[:min(len(p), 8<<10-len(h.b))]...)
	return len(p), nil
}

func (h *head) String() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return string(h.b)
}

// realSleep waits d or until ctx ends.
func realSleep(ctx context.Context, d time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
