package deploy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/nix-hive/nix-hive/eval"
	"github.com/nix-hive/nix-hive/state"
)

// Remote runs shell commands on instances (transport.Pool does).
type Remote interface {
	// Run runs cmd on the instance; a non-zero exit is exitCode with a nil
	// error, err is for transport failures.
	Run(ctx context.Context, name, cmd string, stdin io.Reader, stdout, stderr io.Writer) (exitCode int, err error)
}

// Copier moves closures out of the deploy host's store.
type Copier interface {
	// Copy copies the closures of paths to dest: an instance name or a
	// Nix store URL. Paths dest already has are skipped.
	Copy(ctx context.Context, dest string, paths []string) error
}

// Policy decides the checks around activation and when a rollout stops
// (a Starlark rollout policy implements it).
type Policy interface {
	// Pre runs before activation; false skips the host.
	Pre(ctx context.Context, instance string) (ok bool, msg string)
	// Post runs after a confirmed activation; false fails the host.
	Post(ctx context.Context, instance string) (ok bool, msg string)
	// ShouldStop is asked after each host of wave (0-based) finishes; true
	// means no further host is started.
	ShouldStop(wave, waveFailures, totalFailures int) bool
	// Rollback reports whether a host whose post-check failed goes back to
	// the system it ran before.
	Rollback() bool
}

// Step names, in the order a host goes through them.
const (
	StepPush       = "push"
	StepSubstitute = "substitute"
	StepPreCheck   = "pre-check"
	StepActivate   = "activate"
	StepConfirm    = "confirm"
	StepPostCheck  = "post-check"
	StepRollback   = "rollback"
	StepDone       = "done"
	// StepFinished events carry a host's final status; exactly one per
	// host that got that far.
	StepFinished = "finished"
)

// Status of a host at the end.
const (
	StatusOK         = "ok"
	StatusUnchanged  = "unchanged"
	StatusFailed     = "failed"
	StatusSkipped    = "skipped"
	StatusNotStarted = "not-started"
	StatusRolledBack = "rolled-back"
	// StatusInterrupted: Ctrl-C stopped the host's transfer; nothing
	// was activated.
	StatusInterrupted = "interrupted"
	StatusStored      = "stored" // a store-only host that received closures
)

// Options tune an execution.
type Options struct {
	Goal     Goal
	Parallel int // hosts worked on at once (default 16)
	SkipPush bool
	// Force activates hosts that already run the wanted system.
	Force bool
	// PublicKey is the hive's signing key; TrustKey passes it on the
	// consumers' command line instead of relying on their nix.conf.
	PublicKey string
	TrustKey  bool
	Sudo      string // privilege command for non-root users
	State     *state.File
	Events    func(Event)
	// Policy, when set, runs checks and may stop the rollout; without one
	// every host is attempted.
	Policy Policy
	// ActivationTimeout bounds one activation, which is allowed to finish
	// after Ctrl-C.
	ActivationTimeout time.Duration
}

// Event is one thing that happened to one host.
type Event struct {
	Time     time.Time `json:"time"`
	Instance string    `json:"instance"`
	Wave     int       `json:"wave"`
	Step     string    `json:"step"`
	Status   string    `json:"status"` // start, ok, failed, skipped, info
	Message  string    `json:"message,omitempty"`
}

// Result is a host's outcome.
type Result struct {
	Instance string        `json:"instance"`
	System   string        `json:"system"`
	Wave     int           `json:"wave"`
	Target   bool          `json:"target"`
	Step     string        `json:"step"` // last step reached
	Status   string        `json:"status"`
	Error    string        `json:"error,omitempty"`
	Checks   []string      `json:"checks,omitempty"`
	Active   string        `json:"active,omitempty"`
	Duration time.Duration `json:"duration"`
}

// Report is the outcome of a deploy.
type Report struct {
	Results     map[string]*Result `json:"results"`
	Order       []string           `json:"order"`
	Interrupted bool               `json:"interrupted"`
	Stopped     string             `json:"stopped,omitempty"` // why later waves did not run
}

// Failed counts hosts that failed or were rolled back.
func (r *Report) Failed() int {
	n := 0
	for _, res := range r.Results {
		if res.Status == StatusFailed || res.Status == StatusRolledBack {
			n++
		}
	}
	return n
}

// OK reports whether every host ended as wanted.
func (r *Report) OK() bool {
	for _, res := range r.Results {
		switch res.Status {
		case StatusOK, StatusUnchanged, StatusStored:
		default:
			return false
		}
	}
	return !r.Interrupted && r.Stopped == ""
}

type executor struct {
	plan   *Plan
	inv    *eval.Inventory
	remote Remote
	copier Copier
	opts   Options

	sem    chan struct{} // transfers
	actSem chan struct{} // activations
	mu     sync.Mutex
	res    map[string]*Result

	ensureOnce map[string]*future
	urlOnce    map[string]*future
	activated  map[string]*future
}

type future struct {
	once sync.Once
	done chan struct{}
	err  error
}

func newFuture() *future { return &future{done: make(chan struct{})} }

func (f *future) run(fn func() error) error {
	f.once.Do(func() {
		f.err = fn()
		close(f.done)
	})
	<-f.done
	return f.err
}

// Execute carries out plan: closures to stores and hosts, then activation
// wave by wave. Every host ends with a Result; none hides another's.
func Execute(ctx context.Context, plan *Plan, inv *eval.Inventory, remote Remote, copier Copier, opts Options) *Report {
	if opts.Parallel <= 0 {
		opts.Parallel = 16
	}
	if opts.Goal == "" {
		opts.Goal = GoalSwitch
	}
	if opts.ActivationTimeout == 0 {
		opts.ActivationTimeout = 30 * time.Minute
	}
	e := &executor{plan: plan, inv: inv, remote: remote, copier: copier, opts: opts,
		sem: make(chan struct{}, opts.Parallel), actSem: make(chan struct{}, opts.Parallel), res: map[string]*Result{},
		ensureOnce: map[string]*future{}, urlOnce: map[string]*future{}, activated: map[string]*future{}}
	for _, n := range plan.Order {
		h := plan.Hosts[n]
		e.res[n] = &Result{Instance: n, System: h.System, Wave: h.Wave + 1, Target: h.Target, Status: StatusNotStarted}
		e.ensureOnce[n] = newFuture()
		e.activated[n] = newFuture()
	}
	for _, t := range plan.Transfers {
		if _, ok := plan.Hosts[t.To]; !ok {
			e.urlOnce[t.To] = newFuture()
		}
	}
	report := &Report{Results: e.res, Order: plan.Order}

	// Closures move for every host at once (bounded by the semaphore), so
	// consumers start substituting as soon as their store holds the path,
	// and later waves' hosts already have their closure when their turn
	// comes.
	var wg sync.WaitGroup
	for _, n := range plan.Order {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := e.ensure(ctx, n)
			if !plan.Hosts[n].Target {
				if err == nil {
					e.update(n, func(r *Result) { r.Status = StatusStored })
				}
				e.finished(n)
			}
		}()
	}

	total := 0
	for wi, wave := range plan.Waves {
		if ctx.Err() != nil || report.Stopped != "" {
			break
		}
		// Hosts start activating in the wave's order (stores first), at
		// most --parallel at once; after Ctrl-C, or once the policy says
		// stop, no new one starts.
		var (
			ww        sync.WaitGroup
			fmu       sync.Mutex
			waveFails int
			stop      bool
		)
		stopped := func() bool { fmu.Lock(); defer fmu.Unlock(); return stop }
		for _, n := range wave {
			if stopped() {
				break
			}
			select {
			case e.actSem <- struct{}{}:
			case <-ctx.Done():
			}
			if ctx.Err() != nil || stopped() {
				if ctx.Err() == nil {
					<-e.actSem
				}
				break
			}
			ww.Add(1)
			go func() {
				defer ww.Done()
				defer func() { <-e.actSem }()
				e.activated[n].run(func() error { return e.activate(ctx, n) })
				if s := e.result(n).Status; s == StatusFailed || s == StatusRolledBack {
					fmu.Lock()
					waveFails++
					total++
					if opts.Policy != nil && !stop && opts.Policy.ShouldStop(wi, waveFails, total) {
						stop = true
						report.Stopped = fmt.Sprintf("policy stopped the rollout after %d failure(s) in wave %d (%d in all)", waveFails, wi+1, total)
					}
					fmu.Unlock()
				}
			}()
		}
		ww.Wait()
		e.save()
		if report.Stopped != "" {
			e.event(Event{Step: "rollout", Status: "failed", Message: report.Stopped})
		}
	}
	if ctx.Err() != nil {
		report.Interrupted = true
	}
	wg.Wait()
	e.save()
	return report
}

func (e *executor) result(n string) Result {
	e.mu.Lock()
	defer e.mu.Unlock()
	return *e.res[n]
}

func (e *executor) update(n string, fn func(r *Result)) {
	e.mu.Lock()
	fn(e.res[n])
	e.mu.Unlock()
}

func (e *executor) event(ev Event) {
	if ev.Time.IsZero() {
		ev.Time = time.Now()
	}
	if e.opts.Events != nil {
		e.opts.Events(ev)
	}
}

func (e *executor) step(n, step, status, msg string) {
	wave := 0
	if h := e.plan.Hosts[n]; h != nil && h.Target {
		wave = h.Wave + 1
	}
	e.update(n, func(r *Result) { r.Step = step })
	e.event(Event{Instance: n, Wave: wave, Step: step, Status: status, Message: msg})
}

// finished announces a host's outcome (StepFinished, with its final
// status); progress views count these.
func (e *executor) finished(n string) {
	r := e.result(n)
	e.event(Event{Instance: n, Wave: r.Wave, Step: StepFinished, Status: r.Status, Message: r.Error})
}

func (e *executor) fail(n, step string, err error) error {
	msg := err.Error()
	status := StatusFailed
	if errors.Is(err, context.Canceled) {
		status = StatusInterrupted
	}
	e.update(n, func(r *Result) {
		r.Step, r.Status, r.Error = step, status, msg
	})
	e.step(n, step, status, msg)
	return fmt.Errorf("%s: %s: %w", n, step, err)
}

func (e *executor) acquire(ctx context.Context) error {
	select {
	case e.sem <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (e *executor) release() { <-e.sem }

// ensure makes sure host n holds every closure it needs.
func (e *executor) ensure(ctx context.Context, n string) error {
	return e.ensureOnce[n].run(func() error {
		h := e.plan.Hosts[n]
		if e.opts.SkipPush {
			e.step(n, StepPush, "skipped", "--no push")
			e.update(n, func(r *Result) { r.Step = StepDone })
			return nil
		}
		switch h.Source.Kind {
		case "push":
			if err := e.acquire(ctx); err != nil {
				return e.fail(n, StepPush, err)
			}
			defer e.release()
			e.step(n, StepPush, "start", fmt.Sprintf("%d closure(s)", len(h.Paths)))
			start := time.Now()
			if err := e.copier.Copy(ctx, n, h.Paths); err != nil {
				return e.fail(n, StepPush, err)
			}
			e.step(n, StepPush, "ok", time.Since(start).Round(time.Millisecond).String())
		case "cache":
			f := e.urlOnce[h.Source.From]
			err := f.run(func() error {
				if err := e.acquire(ctx); err != nil {
					return err
				}
				defer e.release()
				e.event(Event{Instance: h.Source.From, Step: StepPush, Status: "start"})
				err := e.copier.Copy(ctx, h.Source.From, e.urlPaths(h.Source.From))
				if err != nil {
					e.event(Event{Instance: h.Source.From, Step: StepPush, Status: "failed", Message: err.Error()})
					return err
				}
				e.event(Event{Instance: h.Source.From, Step: StepPush, Status: "ok"})
				return nil
			})
			if err != nil {
				return e.fail(n, StepPush, fmt.Errorf("push to store %s: %w", h.Source.From, err))
			}
			if err := e.substitute(ctx, n, h.Source.From, nil, 0); err != nil {
				return err
			}
		case "store":
			if err := e.ensure(ctx, h.Source.From); err != nil {
				return e.fail(n, StepSubstitute, fmt.Errorf("its store %s did not receive the closure", h.Source.From))
			}
			st := e.inv.Instances[h.Source.From]
			user := st.StoreUser
			if user == "" {
				user = st.User
			}
			url := "ssh://" + user + "@" + st.Host
			var known []string
			for _, k := range st.HostKeys {
				known = append(known, knownHostsName(st.Host, st.Port)+" "+k)
			}
			if err := e.substitute(ctx, n, url, known, st.Port); err != nil {
				return err
			}
		}
		e.update(n, func(r *Result) { r.Step = StepDone })
		return nil
	})
}

func knownHostsName(host string, port int) string {
	if port == 0 || port == 22 {
		return host
	}
	return fmt.Sprintf("[%s]:%d", host, port)
}

func (e *executor) urlPaths(url string) []string {
	for _, t := range e.plan.Transfers {
		if t.To == url {
			return t.Paths
		}
	}
	return nil
}

func (e *executor) substitute(ctx context.Context, n, from string, known []string, port int) error {
	if err := e.acquire(ctx); err != nil {
		return e.fail(n, StepSubstitute, err)
	}
	defer e.release()
	h := e.plan.Hosts[n]
	in := e.inv.Instances[n]
	e.step(n, StepSubstitute, "start", "from "+from)
	start := time.Now()
	cmd := substituteCommand(h.Paths, from, known, port, e.opts.PublicKey, e.opts.TrustKey, in.User, e.opts.Sudo)
	var stderr bytes.Buffer
	code, err := e.remote.Run(ctx, n, cmd, nil, io.Discard, &stderr)
	if err == nil && code != 0 {
		err = substituteError(from, code, stderr.String())
	}
	if err != nil {
		return e.fail(n, StepSubstitute, err)
	}
	e.step(n, StepSubstitute, "ok", time.Since(start).Round(time.Millisecond).String())
	return nil
}

// activate runs the pre-check, activation, confirmation and post-check of
// one target host.
func (e *executor) activate(ctx context.Context, n string) error {
	h := e.plan.Hosts[n]
	in := e.inv.Instances[n]
	start := time.Now()
	defer func() {
		e.update(n, func(r *Result) { r.Duration = time.Since(start) })
		e.record(n)
		e.finished(n)
	}()
	// Stores activate before their consumers in the same wave.
	if st := in.Store; st != "" {
		if sh, ok := e.plan.Hosts[st]; ok && sh.Target && sh.Wave == h.Wave {
			<-e.activated[st].done
		}
	}
	if err := e.ensure(ctx, n); err != nil {
		return err
	}
	if ctx.Err() != nil {
		return nil // not started: Ctrl-C came first
	}
	// An instance already running the wanted system is left alone.
	before, err := queryHost(ctx, e.remote, n)
	if err != nil {
		return e.fail(n, StepActivate, err)
	}
	if !e.opts.Force && e.current(before, h.OutPath) {
		e.update(n, func(r *Result) { r.Status, r.Step, r.Active = StatusUnchanged, StepDone, before.Active })
		e.step(n, StepDone, "ok", "already active")
		return nil
	}
	if e.opts.Policy != nil {
		e.step(n, StepPreCheck, "start", "")
		ok, msg := e.opts.Policy.Pre(ctx, n)
		e.update(n, func(r *Result) { r.Checks = append(r.Checks, "pre: "+okWord(ok)+msgSuffix(msg)) })
		if !ok {
			e.update(n, func(r *Result) { r.Status, r.Step, r.Error = StatusSkipped, StepPreCheck, "pre-check failed: "+msg })
			e.step(n, StepPreCheck, "failed", msg)
			return nil
		}
		e.step(n, StepPreCheck, "ok", msg)
	}
	// Activation is not cancelled by Ctrl-C: a half-run
	// switch-to-configuration is worse than a finished one.
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), e.opts.ActivationTimeout)
	defer cancel()
	e.step(n, StepActivate, "start", string(e.opts.Goal))
	out := &lockedBuffer{}
	code, err := e.remote.Run(actx, n, activateCommand(h.OutPath, e.opts.Goal, in.User, e.opts.Sudo), nil, out, out)
	if err == nil && code != 0 {
		err = fmt.Errorf("switch-to-configuration %s exited %d: %s", e.opts.Goal, code, lastLines(out.String(), 3))
	}
	if err != nil {
		return e.fail(n, StepActivate, err)
	}
	e.step(n, StepActivate, "ok", "")
	after, err := queryHost(actx, e.remote, n)
	if err != nil {
		return e.fail(n, StepConfirm, err)
	}
	if err := e.confirm(after, h.OutPath); err != nil {
		return e.fail(n, StepConfirm, err)
	}
	e.update(n, func(r *Result) { r.Active = after.Active })
	e.step(n, StepConfirm, "ok", "")
	if e.opts.Policy != nil {
		e.step(n, StepPostCheck, "start", "")
		ok, msg := e.opts.Policy.Post(actx, n)
		e.update(n, func(r *Result) { r.Checks = append(r.Checks, "post: "+okWord(ok)+msgSuffix(msg)) })
		if !ok {
			e.step(n, StepPostCheck, "failed", msg)
			if e.opts.Policy.Rollback() {
				return e.rollback(actx, n, before, "post-check failed: "+msg)
			}
			e.update(n, func(r *Result) { r.Status, r.Step, r.Error = StatusFailed, StepPostCheck, "post-check failed: "+msg })
			return nil
		}
		e.step(n, StepPostCheck, "ok", msg)
	}
	e.update(n, func(r *Result) { r.Status, r.Step = StatusOK, StepDone })
	e.step(n, StepDone, "ok", "")
	return nil
}

func okWord(ok bool) string {
	if ok {
		return "ok"
	}
	return "failed"
}

func msgSuffix(m string) string {
	if m == "" {
		return ""
	}
	return " (" + m + ")"
}

// current reports whether a host already runs path the way the goal would
// leave it.
func (e *executor) current(hs HostState, path string) bool {
	switch e.opts.Goal {
	case GoalSwitch:
		return hs.Active == path && hs.Profile == path
	case GoalBoot:
		return hs.Profile == path
	case GoalTest:
		return hs.Active == path
	}
	return false
}

func (e *executor) confirm(hs HostState, path string) error {
	switch e.opts.Goal {
	case GoalSwitch, GoalTest:
		if hs.Active != path {
			return fmt.Errorf("/run/current-system is %q after activation, want %s", hs.Active, path)
		}
		if e.opts.Goal == GoalSwitch && hs.Profile != path {
			return fmt.Errorf("system profile points at %q, want %s", hs.Profile, path)
		}
	case GoalBoot:
		if hs.Profile != path {
			return fmt.Errorf("system profile points at %q after boot activation, want %s", hs.Profile, path)
		}
	}
	return nil
}

// rollback returns n to the system it ran before this deploy.
func (e *executor) rollback(ctx context.Context, n string, before HostState, why string) error {
	e.step(n, StepRollback, "start", why)
	after, err := rollbackHost(ctx, e.remote, n, e.inv.Instances[n].User, e.opts.Sudo)
	if err == nil && before.Active != "" && after.Active != before.Active {
		err = fmt.Errorf("after rollback /run/current-system is %q, want %q", after.Active, before.Active)
	}
	if err != nil {
		return e.fail(n, StepRollback, fmt.Errorf("%s; rollback failed: %w", why, err))
	}
	e.update(n, func(r *Result) {
		r.Status, r.Step, r.Error, r.Active = StatusRolledBack, StepRollback, why, after.Active
	})
	e.step(n, StepRollback, "ok", "back on "+before.Active)
	return nil
}

func (e *executor) record(n string) {
	if e.opts.State == nil {
		return
	}
	r := e.result(n)
	e.opts.State.SetInstance(n, state.Instance{System: r.System, OutPath: e.plan.Hosts[n].OutPath,
		Step: r.Step, Status: r.Status, Error: r.Error, Time: time.Now().UTC()})
}

func (e *executor) save() {
	if e.opts.State == nil {
		return
	}
	for _, n := range e.plan.Order {
		if e.result(n).Status != StatusNotStarted || e.result(n).Step != "" {
			e.record(n)
		}
	}
	if err := e.opts.State.Save(); err != nil {
		e.event(Event{Step: "state", Status: "failed", Message: err.Error()})
	}
}

// substituteError explains a failed substitution, first of all the case an
// operator must act on: the host does not trust the key the path is
// signed with.
func substituteError(from string, code int, stderr string) error {
	if strings.Contains(stderr, "valid signature") || strings.Contains(stderr, "not signed by any of the keys") {
		return fmt.Errorf("refused the closure from %s: not signed by a key in the host's trusted-public-keys (configure it with lib/module.nix, or pass --trust-hive-key)", from)
	}
	var errs []string
	for _, l := range strings.Split(stderr, "\n") {
		if strings.Contains(l, "error:") {
			errs = append(errs, strings.TrimSpace(l))
		}
	}
	if len(errs) == 0 {
		errs = []string{lastLines(stderr, 3)}
	}
	return fmt.Errorf("nix-store --realise from %s exited %d: %s", from, code, strings.Join(errs, " | "))
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}
