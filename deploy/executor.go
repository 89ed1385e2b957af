package deploy

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/nix-hive/nix-hive/eval"
	"github.com/nix-hive/nix-hive/fanout"
	"github.com/nix-hive/nix-hive/host"
	"github.com/nix-hive/nix-hive/plan"
	"github.com/nix-hive/nix-hive/state"
)

// Copier moves closures out of the deploy host's store.
type Copier interface {
	// Copy copies the closures of paths to dest: an instance name or a
	// Nix store URL. Paths dest already has are skipped.
	Copy(ctx context.Context, dest string, paths []string) error
}

// Fetcher is a Copier that also brings closures to this machine, from
// an instance's store: a build host's outputs, for hosts that cannot
// substitute from it. Each path must be signed by key (the hive's).
type Fetcher interface {
	Fetch(ctx context.Context, from, key string, paths []string) error
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
	// RollbackSucceeded reports whether a failed host stops the rollout
	// and returns every host it changed (Options.RollbackSucceeded).
	RollbackSucceeded() bool
}

// Result is a host's outcome.
type Result struct {
	Instance string   `json:"instance"`
	System   string   `json:"system"`
	Wave     int      `json:"wave"`
	Target   bool     `json:"target"`
	Step     Step     `json:"step"` // where it ended
	Status   Status   `json:"status"`
	Error    string   `json:"error,omitempty"`
	Checks   []string `json:"checks,omitempty"`
	// Before is what the host ran when this deploy reached it; Active
	// what it runs at the end.
	Before   string        `json:"before,omitempty"`
	Active   string        `json:"active,omitempty"`
	Job      string        `json:"job,omitempty"` // the activation job on the host
	Duration time.Duration `json:"duration"`

	untouched bool // hive.state keeps its earlier record
}

// Report is the outcome of a deploy.
type Report struct {
	Results     map[string]*Result `json:"results"`
	Order       []string           `json:"order"`
	Interrupted bool               `json:"interrupted"`
	Stopped     string             `json:"stopped,omitempty"` // why later waves did not run
}

// OK reports whether every host ended as wanted.
func (r *Report) OK() bool {
	return r.NotOK() == 0 && len(r.StoresNotOK()) == 0 && !r.Interrupted && r.Stopped == ""
}

// NotOK counts the targets that did not end as wanted (a store that only
// received closures is not one: see StoresNotOK).
func (r *Report) NotOK() int {
	n := 0
	for _, res := range r.Results {
		if res.Target && !res.Status.Succeeded() {
			n++
		}
	}
	return n
}

// Targets counts the hosts the deploy was to activate.
func (r *Report) Targets() int {
	n := 0
	for _, res := range r.Results {
		if res.Target {
			n++
		}
	}
	return n
}

// StoresNotOK lists, in order, the stores that only were to receive
// their consumers' closures and did not.
func (r *Report) StoresNotOK() []string {
	var out []string
	for _, n := range r.Order {
		if res := r.Results[n]; !res.Target && !res.Status.Succeeded() {
			out = append(out, n)
		}
	}
	return out
}

// Unknown lists, in order, hosts whose activation outcome nix-hive does
// not know: it may still be running there.
func (r *Report) Unknown() []string {
	var out []string
	for _, n := range r.Order {
		if r.Results[n].Status == StatusUnknown {
			out = append(out, n)
		}
	}
	return out
}

// executor carries out one plan as a rollout: it starts the transfers,
// gives the targets their turns in the pipeline wave by wave, and settles
// each host's outcome, recording it in hive.state. The parts it holds
// keep their own state; what they share is the journal they write to and
// the deploy locks.
type executor struct {
	plan   *plan.Plan
	inv    *eval.Inventory
	remote host.Remote
	opts   Options

	journal   *journal
	locks     *hostLocks
	transfers *transfers
	pipeline  *pipeline

	jumps     map[string]bool    // hosts that are other hosts' jump host
	activated map[string]*future // the host's activation ended or never will start

	// reverting is why the hosts this deploy changed return to what they
	// ran before (the first failure, with RollbackSucceeded); "" while none
	// has failed.
	reverting string
	mu        sync.Mutex
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

// result is what run returned, once it has; ran is false before.
func (f *future) result() (err error, ran bool) {
	select {
	case <-f.done:
		return f.err, true
	default:
		return nil, false
	}
}

// Execute carries out plan: closures to stores and hosts, then activation
// wave by wave. Every host ends with a Result; none hides another's.
// Cancelling ctx (Ctrl-C) starts nothing new and stops transfers; running
// activations go on until opts.Abort is closed.
func Execute(ctx context.Context, p *plan.Plan, inv *eval.Inventory, remote host.Remote, copier Copier, opts Options) *Report {
	opts = opts.withDefaults()
	if opts.Connection.Parallel <= 0 {
		opts.Connection.Parallel = AutoParallel(p)
	}
	e := newExecutor(p, inv, remote, copier, opts)
	actx, cancel := activationContext(ctx, e.opts.Abort)
	defer cancel()
	report := &Report{Results: e.journal.res, Order: p.Order}
	stopWatch := context.AfterFunc(ctx, e.announceInterrupt)
	defer stopWatch()

	// Closures move for every host at once (stores first), so consumers
	// substitute as soon as their store holds the path, and later waves'
	// hosts have their closure when their turn comes.
	transfers := make(chan struct{})
	go func() {
		defer close(transfers)
		e.transferAll(ctx)
	}()
	report.Stopped = e.runWaves(ctx, actx)
	<-transfers
	e.settleUnstarted()
	if e.reverting != "" {
		e.revert(ctx, actx)
	}
	e.locks.releaseAll(ctx)
	report.Interrupted = ctx.Err() != nil
	e.save(true)
	return report
}

// AutoParallel is how many hosts a deploy works on at once unless told:
// enough to keep every store of the plan serving storeConcurrency
// consumers, and never fewer than fanout.DefaultLimit (16) for direct
// pushes and activations; capped at 256, beyond which the deploy host's
// own SSH sessions and processes, not the hosts, become the limit.
// A tree of 4 racks runs 32 hosts at once, 32 racks 256: more racks, more
// parallel service, without the deploy host thrashing on a flat fleet.
func AutoParallel(p *plan.Plan) int {
	stores := map[string]bool{}
	for _, h := range p.Hosts {
		if h.Source.Kind == plan.SourceStore || h.Source.Kind == plan.SourceCache || h.Source.Kind == plan.SourceBuilder {
			stores[h.Source.From] = true
		}
	}
	return min(max(fanout.DefaultLimit, storeConcurrency*len(stores)), 256)
}

// storeConcurrency bounds the consumers substituting from one store at
// once. Each opens an SSH connection to the store, and sshd's default
// MaxStartups (10:30:100) starts dropping unauthenticated connections
// beyond 10 at a time: a rack of 250 consumers with a high --parallel
// would see random "connection closed" failures. Below that limit they
// queue instead; --parallel still bounds the whole deploy.
const storeConcurrency = 8

func newExecutor(p *plan.Plan, inv *eval.Inventory, remote host.Remote, copier Copier, opts Options) *executor {
	e := &executor{plan: p, inv: inv, remote: remote, opts: opts,
		journal:   &journal{plan: p, events: opts.Record.Events, res: map[string]*Result{}},
		locks:     newHostLocks(remote, inv, opts.Connection),
		activated: map[string]*future{}}
	e.transfers = newTransfers(p, inv, remote, copier, opts, e.locks, e.journal)
	e.pipeline = newPipeline(p, inv, remote, opts, e.journal, e.locks, e.transfers)
	for _, n := range p.Order {
		h := p.Hosts[n]
		wave := 0 // a store that only receives closures activates in no wave
		if h.Target {
			wave = h.Wave + 1
		}
		e.journal.res[n] = &Result{Instance: n, System: h.System, Wave: wave, Target: h.Target, Status: StatusNotStarted}
		e.activated[n] = newFuture()
	}
	e.jumps = jumpHosts(inv)
	return e
}

// activationContext is not cancelled by Ctrl-C (a half-run
// switch-to-configuration is worse than a finished one; and it runs
// detached anyway), only by abort.
func activationContext(ctx context.Context, abort <-chan struct{}) (context.Context, context.CancelFunc) {
	actx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	if abort != nil {
		go func() {
			select {
			case <-abort:
				cancel()
			case <-actx.Done():
			}
		}()
	}
	return actx, cancel
}

func (e *executor) announceInterrupt() {
	names := e.pipeline.activations()
	msg := "interrupted: no further host starts and transfers stop"
	if len(names) > 0 {
		sort.Strings(names)
		msg += fmt.Sprintf("; waiting for %d running activation(s) (%v) to finish; interrupt again to stop waiting (they finish on the hosts)", len(names), names)
	}
	e.journal.event(Event{Step: StepRollout, Status: EventInfo, Message: msg})
}

// transferAll makes sure every host holds its closures, stores before
// their consumers (a consumer waits for its store's transfer).
func (e *executor) transferAll(ctx context.Context) {
	order := append([]string(nil), e.plan.Order...)
	sort.SliceStable(order, func(a, b int) bool { return e.plan.Hosts[order[a]].Level < e.plan.Hosts[order[b]].Level })
	fanout.Each(ctx, len(order), e.opts.Connection.Parallel, func(ctx context.Context, i int) {
		n := order[i]
		err := e.transfers.ensure(ctx, n)
		if !e.plan.Hosts[n].Target {
			e.settle(n, StatusStored, err)
			e.finished(n)
		}
	})
}

// settleUnstarted gives a target that no wave started (Ctrl-C came
// first, or the policy stopped the rollout) the outcome of its transfer
// when that failed after this deploy took its lock: its closure was on
// its way (Ctrl-C stopped it, or a push failed), and "not started" would
// say nothing had happened to it. A target whose transfer only waited
// for its turn, or never got its lock, was not touched and stays not
// started: which of the two a host gets depends on what reached it, not
// on when Ctrl-C came.
func (e *executor) settleUnstarted() {
	for _, n := range e.plan.Order {
		r := e.journal.result(n)
		if !r.Target || r.Status != StatusNotStarted || r.Step != "" || !e.locks.holds(n) {
			continue
		}
		if err, ran := e.transfers.ensured[n].result(); ran && err != nil {
			e.settle(n, "", err)
			e.record(n)
			e.finished(n)
		}
	}
}

// runWaves activates wave after wave and returns why it stopped early, if
// it did.
func (e *executor) runWaves(ctx, actx context.Context) string {
	total := 0
	for wi, wave := range e.plan.Waves {
		if ctx.Err() != nil {
			break
		}
		stopped := e.runWave(ctx, actx, wi, wave, &total)
		e.save(false)
		if stopped != "" {
			e.journal.event(Event{Step: StepRollout, Status: EventFailed, Message: stopped})
			return stopped
		}
	}
	return ""
}

// runWave activates one wave's hosts in its order (stores first), at most
// Connection.Parallel at once; once the policy says stop, or after Ctrl-C, no
// further host starts.
func (e *executor) runWave(ctx, actx context.Context, wi int, wave []string, total *int) string {
	wctx, stop := context.WithCancel(ctx)
	defer stop()
	var (
		mu        sync.Mutex
		waveFails int
		stopped   string
	)
	started := fanout.Each(wctx, len(wave), e.opts.Connection.Parallel, func(_ context.Context, i int) {
		n := wave[i]
		e.activated[n].run(func() error { e.host(ctx, actx, n); return nil })
		if s := e.journal.result(n).Status; s.Succeeded() || s == StatusSkipped || s == StatusNotStarted {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		waveFails++
		*total++
		if e.rollbackSucceeded() && stopped == "" {
			why := fmt.Sprintf("%s failed in wave %d", n, wi+1)
			e.mu.Lock()
			e.reverting = why
			e.mu.Unlock()
			stopped = why + ": the rollout stopped, and the hosts it changed return to what they ran before (rollback succeeded)"
			stop()
		}
		if e.opts.Policy != nil && stopped == "" && e.opts.Policy.ShouldStop(wi, waveFails, *total) {
			stopped = fmt.Sprintf("policy stopped the rollout after %d failure(s) in wave %d (%d in all)", waveFails, wi+1, *total)
			stop()
		}
	})
	// Consumers of a store that never started must not wait for it.
	for _, n := range wave[started:] {
		e.activated[n].run(func() error { return nil })
	}
	return stopped
}

// host runs target n's pipeline from its wave's turn on and settles it.
func (e *executor) host(ctx, actx context.Context, n string) {
	start := time.Now()
	e.waitForStore(n)
	status, err := e.pipeline.activate(ctx, actx, n)
	e.journal.update(n, func(r *Result) { r.Duration = time.Since(start) })
	e.settle(n, status, err)
	e.record(n)
	e.letGo(ctx, n)
	e.finished(n)
}

// waitForStore lets a store activate before its consumers in the same
// wave.
func (e *executor) waitForStore(n string) {
	st := e.inv.Instances[n].Store
	if sh, ok := e.plan.Hosts[st]; ok && sh.Target && sh.Wave == e.plan.Hosts[n].Wave {
		<-e.activated[st].done
	}
}

// settle sets a host's outcome from what its pipeline returned: the one
// place a Result's status, step and error are decided.
func (e *executor) settle(n string, ok Status, err error) {
	status, step, msg, untouched := outcome(ok, err)
	e.journal.update(n, func(r *Result) {
		r.Status, r.Step, r.Error, r.untouched = status, step, msg, untouched
	})
	switch {
	case err == nil:
	case status == StatusSkipped:
		e.journal.step(n, step, EventSkipped, msg)
	case status == StatusRolledBack:
		// The rollback itself went well (its own event said so); what
		// failed is the host's deploy.
		e.journal.step(n, StepDone, EventFailed, "rolled back: "+msg)
	default:
		e.journal.step(n, step, EventFailed, msg)
	}
}

// finished announces a host's outcome (StepFinished, with its final
// status); progress views count these.
func (e *executor) finished(n string) {
	r := e.journal.result(n)
	st := EventOK
	if !r.Status.Succeeded() {
		st = EventFailed
	}
	e.journal.event(Event{Instance: n, Wave: r.Wave, Step: StepFinished, Status: st, Result: r.Status, Message: r.Error})
}

// letGo releases target n's deploy lock and, unless other hosts are
// reached through it or served by it, closes its pooled connection, as
// soon as its pipeline has ended. Nothing of this deploy touches it
// again, and at a thousand hosts, holding every connection until the last
// host is done costs memory here and keepalives through the uplink for
// the whole deploy.
func (e *executor) letGo(ctx context.Context, n string) {
	if e.rollbackSucceeded() && e.journal.result(n).Status == StatusOK {
		// It may yet be reverted: nobody else deploys to it meanwhile.
		return
	}
	e.locks.release(ctx, n)
	if !e.transfers.servesOthers(n) && !e.jumps[n] {
		e.remote.Release(n)
	}
}

// record writes a host's outcome to hive.state (in memory; save writes
// the file). A dry activation deploys nothing and is not recorded.
func (e *executor) record(n string) {
	r := e.journal.result(n)
	if e.opts.Record.State == nil || r.untouched || (r.Target && e.opts.Activation.Goal == host.GoalDryActivate) {
		return
	}
	now := time.Now().UTC()
	if !r.Target {
		// A store that only received closures keeps the record of its own
		// activation, which this deploy did not touch.
		rec, _ := e.opts.Record.State.Instance(n)
		if rec.System == "" {
			rec.System = r.System
		}
		rec.Stored = &state.Stored{Paths: e.plan.Hosts[n].Paths, Status: string(r.Status), Error: r.Error, Time: now}
		e.opts.Record.State.SetInstance(n, rec)
		return
	}
	rec := state.Instance{System: r.System, OutPath: e.plan.Hosts[n].OutPath, Specialisation: e.plan.Hosts[n].Specialisation,
		Goal: string(e.opts.Activation.Goal), Step: string(r.Step), Status: string(r.Status), Error: r.Error,
		Before: r.Before, Job: r.Job, Time: now}
	if prev, ok := e.opts.Record.State.Instance(n); ok {
		rec.Stored = prev.Stored
	}
	e.opts.Record.State.SetInstance(n, rec)
}

// save writes hive.state: every host so far reached, and at the end
// (all) every host of the plan, those never started included.
func (e *executor) save(all bool) {
	if e.opts.Record.State == nil {
		return
	}
	for _, n := range e.plan.Order {
		if r := e.journal.result(n); all || r.Status != StatusNotStarted || r.Step != "" {
			e.record(n)
		}
	}
	if err := e.opts.Record.State.Save(); err != nil {
		e.journal.event(Event{Step: StepState, Status: EventFailed, Message: err.Error()})
	}
}
