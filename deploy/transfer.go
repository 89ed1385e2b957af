package deploy

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/nix-hive/nix-hive/eval"
	"github.com/nix-hive/nix-hive/host"
	"github.com/nix-hive/nix-hive/nixcmd"
	"github.com/nix-hive/nix-hive/plan"
)

// transfers bring every host the closures the plan gives it: pushed
// from this machine, pushed to a store URL, or substituted from its
// instance store, each once however many ask, with the substitutions
// from one store bounded and a store's bad copies repaired. They run
// ahead of the waves, for every host at once, so they are apart from the
// executor, which only waits for them; a target's deploy lock is taken
// here, since a host another deploy holds gets no transfer.
type transfers struct {
	plan    *plan.Plan
	inv     *eval.Inventory
	remote  host.Remote
	copier  Copier
	opts    Options
	locks   *hostLocks
	journal *journal

	servers map[string]bool // hosts that are other hosts' store
	// storeSlots bound the substitutions from each store instance.
	storeSlots map[string]chan struct{}
	ensured    map[string]*future // the host holds what it runs (or failed to)
	supplied   map[string]*future // the host holds every closure of the plan's for it
	urlPushed  map[string]*future
	// fetched are the build hosts whose outputs came to this machine,
	// for hosts that cannot substitute from them.
	fetched map[string]*future
	// agents are the stores made to hold this nix-hive's agent for
	// their consumers (agentSource).
	agents map[string]*future

	mu sync.Mutex
	// repairs are the store copies consumers refused, by "store path".
	repairs map[string]*repair
}

func newTransfers(p *plan.Plan, inv *eval.Inventory, remote host.Remote, copier Copier, opts Options, locks *hostLocks, j *journal) *transfers {
	t := &transfers{plan: p, inv: inv, remote: remote, copier: copier, opts: opts, locks: locks, journal: j,
		servers: map[string]bool{}, storeSlots: map[string]chan struct{}{},
		ensured: map[string]*future{}, supplied: map[string]*future{}, urlPushed: map[string]*future{},
		fetched: map[string]*future{}, agents: map[string]*future{}, repairs: map[string]*repair{}}
	for _, on := range p.BuiltOn {
		if t.fetched[on] == nil {
			t.fetched[on] = newFuture()
			t.storeSlots[on] = make(chan struct{}, storeConcurrency)
		}
	}
	for _, n := range p.Order {
		h := p.Hosts[n]
		t.ensured[n] = newFuture()
		t.supplied[n] = newFuture()
		if h.Source.Kind == plan.SourceStore && !t.servers[h.Source.From] {
			t.servers[h.Source.From] = true
			t.storeSlots[h.Source.From] = make(chan struct{}, storeConcurrency)
			t.agents[h.Source.From] = newFuture()
		}
	}
	locks.agent = t.agentSource
	for _, tr := range p.Transfers {
		if _, ok := p.Hosts[tr.To]; !ok {
			t.urlPushed[tr.To] = newFuture()
		}
	}
	return t
}

// ensure makes sure host n holds what it is to run, once however many
// ask. A target takes its deploy lock first; one that another deploy
// holds gets no transfer unless it is a store that others need. A target
// that already runs its system gets nothing: a store among them receives
// its consumers' closures only when the first consumer that lacks them
// asks (supply), so a no-op deploy copies nothing anywhere.
func (t *transfers) ensure(ctx context.Context, n string) error {
	return t.ensured[n].run(func() error {
		if t.plan.Hosts[n].Target {
			hs, ok, err := t.seenUpToDate(ctx, n)
			if ok {
				t.locks.seen(n, hs)
				return nil
			}
			if err == nil {
				err = t.locks.lock(ctx, n)
			} else {
				err = t.locks.lockFailed(n, err)
			}
			if err != nil && !t.servesOthers(n) {
				return err
			}
			if t.alreadyThere(n) {
				return nil // it runs the closure, so it has it
			}
		}
		return t.supply(ctx, n)
	})
}

// agentSource is where target n, should it lack this nix-hive's agent,
// substitutes it from: its store instance, once that holds the agent and
// n's closures, which n then substitutes with the agent, in one nix-store
// call (one login to the store; its substitution is then done, see
// substitute). The store gets the agent with its own lock when this
// deploy locks it, else in a session of its own, once; so this machine
// sends the agent to each store rather than to every host. The
// substitution takes one of the store's slots, as a closure's does. A
// host fed otherwise, or whose store cannot be given the agent, gets it
// from here.
func (t *transfers) agentSource(n string) host.AgentSource {
	h := t.plan.Hosts[n]
	if h == nil || h.Source.Kind != plan.SourceStore || t.opts.local {
		return nil
	}
	st := t.inv.Instances[h.Source.From]
	return func(ctx context.Context) (*host.Substitution, []string, func()) {
		// What the store holds as this deploy supplies it (an error here
		// is the consumer's transfer's to tell).
		stored := t.ensure(ctx, st.Name) == nil && t.supply(ctx, st.Name) == nil
		if !stored {
			return nil, nil, nil // it would not answer the agent's session either
		}
		err := t.agents[st.Name].run(func() error {
			if t.opts.Connection.Privilege.HasRootAgent(st.Name) {
				return nil // its lock found it
			}
			return host.EnsureAgent(ctx, t.remote, st, t.agentSource(st.Name))
		})
		if err != nil || ctx.Err() != nil {
			return nil, nil, nil
		}
		release, err := t.slot(ctx, n, st.Name)
		if err != nil {
			return nil, nil, nil
		}
		s := t.trusting(host.FromStore(st))
		var paths []string
		if !t.opts.Steps.SkipPush {
			paths = h.Paths
		}
		return &s, paths, release
	}
}

// supply transfers to n every closure the plan gives it (its own and,
// for a store, its consumers'), once however many ask.
func (t *transfers) supply(ctx context.Context, n string) error {
	return t.supplied[n].run(func() error { return t.transfer(ctx, n) })
}

// alreadyThere reports whether target n, as read when its lock was taken,
// already runs what the deploy would leave it running (or only awaits
// its checks), so that a no-op deploy copies nothing to it.
func (t *transfers) alreadyThere(n string) bool {
	if t.opts.Activation.Force {
		return false
	}
	hs, ok := t.locks.state(n)
	h := t.plan.Hosts[n]
	return ok && hs.Running == "" && (upToDate(t.opts.Activation.Goal, hs, h) || checksPending(t.opts.Activation.Goal, hs, h) != "")
}

// seenUpToDate reads target n's state without its deploy lock where
// Options.Files makes that cheap: a host that runs what the deploy would
// leave it running, that no deploy holds and where no activation runs,
// has nothing to lock for (a deploy that takes it a moment later finds
// it as this one leaves it). Keys to upload, a held lock, or a read that
// cannot decide take the lock as usual; so does a host hive.state says
// runs another system, which the read would only confirm, at a cost: on
// the 103-host lab a deploy of a change through a holder sent 34.1 KB per
// host with the read, 29.1 without.
//
// A host that did not answer the read within the connect timeout is an
// error: taking the lock would wait as long again for the same silence.
func (t *transfers) seenUpToDate(ctx context.Context, n string) (host.State, bool, error) {
	if t.opts.Connection.Files == nil || t.opts.Activation.Force || t.opts.uploadsKeys(t.inv.Instances[n]) || t.leftElsewhere(n) {
		return host.State{}, false, nil
	}
	f, err := t.opts.Connection.Files(ctx, n)
	if err != nil {
		return host.State{}, false, nil
	}
	hs, exact, held, err := host.ReadState(f, true)
	if errors.Is(err, context.DeadlineExceeded) {
		return host.State{}, false, fmt.Errorf("read the state of %s: %w", n, err)
	}
	if err != nil || !exact || held || hs.Running != "" || !upToDate(t.opts.Activation.Goal, hs, t.plan.Hosts[n]) {
		return host.State{}, false, nil
	}
	return hs, true, nil
}

// leftElsewhere says whether hive.state has n's last deploy ending with
// n running another system than the one this deploy wants.
func (t *transfers) leftElsewhere(n string) bool {
	if t.opts.Record.State == nil {
		return false
	}
	rec, _ := t.opts.Record.State.Instance(n)
	path, known := recordedRunning(rec)
	return known && path != t.plan.Hosts[n].OutPath
}

// servesOthers reports whether n is the store of another host of the
// plan (looked up, not searched: it is asked for every host).
func (t *transfers) servesOthers(n string) bool { return t.servers[n] }

func (t *transfers) transfer(ctx context.Context, n string) error {
	h := t.plan.Hosts[n]
	switch {
	case t.opts.local:
		t.journal.step(n, StepPush, EventSkipped, "built on this machine, the host")
		return nil
	case t.opts.Steps.SkipPush:
		t.journal.step(n, StepPush, EventSkipped, "--no push")
		return nil
	}
	switch h.Source.Kind {
	case plan.SourcePush:
		if err := t.fetch(ctx, h.Paths); err != nil {
			return failed(StepPush, err)
		}
		return t.push(ctx, n, h.Paths)
	case plan.SourceBuilder:
		return t.fromBuilder(ctx, n, h)
	case plan.SourceCache:
		if err := t.pushURL(ctx, h.Source.From); err != nil {
			return failed(StepPush, fmt.Errorf("push to store %s: %w", h.Source.From, err))
		}
		return t.substitute(ctx, n, host.FromURL(h.Source.From))
	case plan.SourceStore:
		err := t.ensure(ctx, h.Source.From)
		if err == nil {
			err = t.supply(ctx, h.Source.From)
		}
		if err != nil {
			// %w: a store push that Ctrl-C stopped leaves its consumers
			// interrupted, not failed.
			return failed(StepSubstitute, fmt.Errorf("its store %s did not receive the closure: %w", h.Source.From, cause(err)))
		}
		return t.substitute(ctx, n, host.FromStore(t.inv.Instances[h.Source.From]))
	}
	return fmt.Errorf("host %s: unknown source %q", n, h.Source.Kind)
}

func (t *transfers) push(ctx context.Context, n string, paths []string) error {
	t.journal.step(n, StepPush, EventStart, fmt.Sprintf("%d closure(s)", len(paths)))
	start := time.Now()
	if err := t.copier.Copy(ctx, n, paths); err != nil {
		return failed(StepPush, err)
	}
	t.journal.step(n, StepPush, EventOK, time.Since(start).Round(time.Millisecond).String())
	return nil
}

// fromBuilder has n substitute its paths from the build host whose
// store holds them, which checks the hive's signature as a store's
// consumer does; n is the build host itself, nothing moves. A host that
// cannot (it cannot reach the builder, say) gets them through this
// machine instead.
func (t *transfers) fromBuilder(ctx context.Context, n string, h *plan.Host) error {
	if n == h.Source.From {
		t.journal.step(n, StepPush, EventSkipped, "built there: it is the build host")
		return nil
	}
	err := t.substitute(ctx, n, host.FromStore(t.inv.Instances[h.Source.From]))
	if err == nil || ctx.Err() != nil {
		return err
	}
	t.journal.step(n, StepPush, EventInfo, fmt.Sprintf("not substituted from its build host %s (%v): the closure comes through this machine", h.Source.From, cause(err)))
	if err := t.fetch(ctx, h.Paths); err != nil {
		return failed(StepPush, err)
	}
	return t.push(ctx, n, h.Paths)
}

// fetch brings the paths among paths that are in a build host's store
// to this machine's, each build host's all at once, once.
func (t *transfers) fetch(ctx context.Context, paths []string) error {
	for _, path := range paths {
		on := t.plan.BuiltOn[path]
		if on == "" {
			continue
		}
		err := t.fetched[on].run(func() error {
			f, ok := t.copier.(Fetcher)
			if !ok {
				return fmt.Errorf("the closures built on %s cannot come through this machine: no fetcher", on)
			}
			var all []string
			for p, o := range t.plan.BuiltOn {
				if o == on {
					all = append(all, p)
				}
			}
			slices.Sort(all)
			t.journal.event(Event{Instance: on, Step: StepPush, Status: EventInfo, Message: fmt.Sprintf("fetching %d closure(s) from build host %s", len(all), on)})
			return f.Fetch(ctx, on, t.opts.publicKey, all)
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// pushURL copies to a store URL once, whichever consumer asks first.
func (t *transfers) pushURL(ctx context.Context, url string) error {
	return t.urlPushed[url].run(func() error {
		t.journal.event(Event{Instance: url, Step: StepPush, Status: EventStart})
		if err := t.fetch(ctx, t.urlPaths(url)); err != nil {
			t.journal.event(Event{Instance: url, Step: StepPush, Status: EventFailed, Message: err.Error()})
			return err
		}
		if err := t.copier.Copy(ctx, url, t.urlPaths(url)); err != nil {
			t.journal.event(Event{Instance: url, Step: StepPush, Status: EventFailed, Message: err.Error()})
			return err
		}
		t.journal.event(Event{Instance: url, Step: StepPush, Status: EventOK})
		return nil
	})
}

func (t *transfers) urlPaths(url string) []string {
	for _, t := range t.plan.Transfers {
		if t.To == url {
			return t.Paths
		}
	}
	return nil
}

// trusting is s with what this deploy tells consumers: the hive's key
// (passed along with --trust-hive-key) and the connect timeout.
func (t *transfers) trusting(s host.Substitution) host.Substitution {
	s.PublicKey, s.TrustKey, s.ConnectTimeout = t.opts.publicKey, t.opts.Steps.TrustKey, t.opts.Connection.ConnectTimeout
	return s
}

// slot takes one of store's substitution slots for n, queueing rather
// than failing (see storeConcurrency); release gives it back.
func (t *transfers) slot(ctx context.Context, n, store string) (release func(), err error) {
	slots := t.storeSlots[store]
	if slots == nil {
		return func() {}, nil
	}
	select {
	case slots <- struct{}{}:
	default:
		t.journal.step(n, StepSubstitute, EventInfo, fmt.Sprintf("queued: %d hosts already substitute from %s", storeConcurrency, store))
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return func() { <-slots }, nil
}

// substitute realises n's paths on n from its store, unless n brought
// them with the agent before its lock (agentSource).
func (t *transfers) substitute(ctx context.Context, n string, s host.Substitution) error {
	if t.locks.carried(n) {
		// The operator reads the outcome's line, not the start's: both
		// say where from.
		how := "from " + s.From + ", with the agent before the lock"
		t.journal.step(n, StepSubstitute, EventStart, how)
		t.journal.step(n, StepSubstitute, EventOK, how)
		return nil
	}
	s = t.trusting(s)
	release, err := t.slot(ctx, n, s.Store)
	if err != nil {
		return failed(StepSubstitute, err)
	}
	defer release()
	t.journal.step(n, StepSubstitute, EventStart, "from "+s.From)
	start := time.Now()
	err = s.Run(ctx, t.remote, t.inv.Instances[n], t.opts.Connection.Privilege, t.plan.Hosts[n].Paths)
	var f *host.SubstituteFailure
	if errors.As(err, &f) {
		err = t.substituteError(ctx, s, f)
	}
	if err != nil {
		return failed(StepSubstitute, err)
	}
	t.journal.step(n, StepSubstitute, EventOK, time.Since(start).Round(time.Millisecond).String())
	return nil
}

// substituteError explains a failed substitution. A copy on an instance
// store that is not what it claims (changed there, or without the hive's
// signature) is checked there and removed, so the next deploy pushes a
// good one; otherwise the case an operator must act on comes first: the
// host does not trust the key the path is signed with.
func (t *transfers) substituteError(ctx context.Context, s host.Substitution, f *host.SubstituteFailure) error {
	if path, kind := nixcmd.BadSubstitute(f.Stderr); path != "" && s.Store != "" && t.opts.publicKey != "" {
		if err := t.repairStoreCopy(ctx, s.Store, path, kind); err != nil {
			return err
		}
	}
	if nixcmd.SignatureRefused(f.Stderr) {
		if s.TrustKey {
			return fmt.Errorf("refused the closure from %s: not signed by the hive key, which it was given with --trust-hive-key", s.From)
		}
		return fmt.Errorf("refused the closure from %s: not signed by a key in the host's trusted-public-keys (configure it with lib/module.nix, or pass --trust-hive-key)", s.From)
	}
	return f
}

// repairStoreCopy checks store's copy of path, which a consumer refused
// (kind: "hash" or "signature", in nixcmd.BadSubstitute's words), once
// however many consumers refuse it. A bad copy is removed from the store
// and the error says so; nil means the copy is good there: the consumer
// refused it for reasons of its own.
func (t *transfers) repairStoreCopy(ctx context.Context, store, path, kind string) error {
	t.mu.Lock()
	r := t.repairs[store+" "+path]
	if r == nil {
		r = &repair{}
		t.repairs[store+" "+path] = r
	}
	t.mu.Unlock()
	r.once.Do(func() {
		verdict, err := host.Repair(ctx, t.remote, t.inv.Instances[store], t.opts.Connection.Privilege, t.opts.publicKey, path)
		what := "is not signed by the hive key"
		if kind == "hash" {
			what = "does not match its hash (it was changed there after it was pushed)"
		}
		bad := fmt.Sprintf("the copy of %s on its store %s %s", path, store, what)
		switch {
		case err != nil:
			r.err = fmt.Errorf("%s, or so the host says; checking it on %s failed: %v", bad, store, err)
		case verdict == "removed":
			t.journal.step(store, StepSubstitute, EventInfo, "removed its bad copy of "+path+" (refused by a consumer); the next deploy pushes it again")
			r.err = fmt.Errorf("%s; nix-hive removed it from %s, and the next deploy pushes it there again", bad, store)
		case verdict == "in use":
			r.err = fmt.Errorf("%s; it is in use on %s, so it was left there: repair it there (nix-store --repair-path with a substituter that has a good copy)", bad, store)
		}
	})
	return r.err
}

// repair is one store copy's check, shared by the consumers that refuse it.
type repair struct {
	once sync.Once
	err  error
}
