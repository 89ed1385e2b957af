package deploy

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nix-hive/nix-hive/host"
	"github.com/nix-hive/nix-hive/nixcmd"
	"github.com/nix-hive/nix-hive/plan"
)

// ensure makes sure host n holds what it is to run, once however many
// ask. A target takes its deploy lock first; one that another deploy
// holds gets no transfer unless it is a store that others need. A target
// that already runs its system gets nothing: a store among them receives
// its consumers' closures only when the first consumer that lacks them
// asks (supply), so a no-op deploy copies nothing anywhere.
func (e *executor) ensure(ctx context.Context, n string) error {
	return e.ensured[n].run(func() error {
		if e.plan.Hosts[n].Target {
			hs, ok, err := e.seenUpToDate(ctx, n)
			if ok {
				e.locks.seen(n, hs)
				return nil
			}
			if err == nil {
				err = e.locks.lock(ctx, n)
			} else {
				err = e.locks.lockFailed(n, err)
			}
			if err != nil && !e.servesOthers(n) {
				return err
			}
			if e.alreadyThere(n) {
				return nil // it runs the closure, so it has it
			}
		}
		return e.supply(ctx, n)
	})
}

// supply transfers to n every closure the plan gives it (its own and,
// for a store, its consumers'), once however many ask.
func (e *executor) supply(ctx context.Context, n string) error {
	return e.supplied[n].run(func() error { return e.transfer(ctx, n) })
}

// alreadyThere reports whether target n, as read when its lock was taken,
// already runs what the deploy would leave it running (or only awaits
// its checks), so that a no-op deploy copies nothing to it.
func (e *executor) alreadyThere(n string) bool {
	if e.opts.Activation.Force {
		return false
	}
	hs, ok := e.locks.state(n)
	path := e.plan.Hosts[n].OutPath
	return ok && hs.Running == "" && (upToDate(e.opts.Activation.Goal, hs, path) || checksPending(e.opts.Activation.Goal, hs, path) != "")
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
func (e *executor) seenUpToDate(ctx context.Context, n string) (host.State, bool, error) {
	if e.opts.Connection.Files == nil || e.opts.Activation.Force || e.hasKeys(n) || e.leftElsewhere(n) {
		return host.State{}, false, nil
	}
	f, err := e.opts.Connection.Files(ctx, n)
	if err != nil {
		return host.State{}, false, nil
	}
	hs, exact, held, err := host.ReadState(f, true)
	if errors.Is(err, context.DeadlineExceeded) {
		return host.State{}, false, fmt.Errorf("read the state of %s: %w", n, err)
	}
	if err != nil || !exact || held || hs.Running != "" || !upToDate(e.opts.Activation.Goal, hs, e.plan.Hosts[n].OutPath) {
		return host.State{}, false, nil
	}
	return hs, true, nil
}

// leftElsewhere says whether hive.state has n's last deploy ending with
// n running another system than the one this deploy wants.
func (e *executor) leftElsewhere(n string) bool {
	if e.opts.Record.State == nil {
		return false
	}
	rec, _ := e.opts.Record.State.Instance(n)
	path, known := recordedRunning(rec)
	return known && path != e.plan.Hosts[n].OutPath
}

// servesOthers reports whether n is the store of another host of the
// plan (looked up, not searched: it is asked for every host).
func (e *executor) servesOthers(n string) bool { return e.servers[n] }

func (e *executor) transfer(ctx context.Context, n string) error {
	h := e.plan.Hosts[n]
	switch {
	case e.opts.local:
		e.journal.step(n, StepPush, EventSkipped, "built on this machine, the host")
		return nil
	case e.opts.Steps.SkipPush:
		e.journal.step(n, StepPush, EventSkipped, "--no push")
		return nil
	}
	switch h.Source.Kind {
	case plan.SourcePush:
		return e.push(ctx, n, h.Paths)
	case plan.SourceCache:
		if err := e.pushURL(ctx, h.Source.From); err != nil {
			return failed(StepPush, fmt.Errorf("push to store %s: %w", h.Source.From, err))
		}
		return e.substitute(ctx, n, host.FromURL(h.Source.From))
	case plan.SourceStore:
		err := e.ensure(ctx, h.Source.From)
		if err == nil {
			err = e.supply(ctx, h.Source.From)
		}
		if err != nil {
			// %w: a store push that Ctrl-C stopped leaves its consumers
			// interrupted, not failed.
			return failed(StepSubstitute, fmt.Errorf("its store %s did not receive the closure: %w", h.Source.From, cause(err)))
		}
		return e.substitute(ctx, n, host.FromStore(e.inv.Instances[h.Source.From]))
	}
	return fmt.Errorf("host %s: unknown source %q", n, h.Source.Kind)
}

func (e *executor) push(ctx context.Context, n string, paths []string) error {
	e.journal.step(n, StepPush, EventStart, fmt.Sprintf("%d closure(s)", len(paths)))
	start := time.Now()
	if err := e.copier.Copy(ctx, n, paths); err != nil {
		return failed(StepPush, err)
	}
	e.journal.step(n, StepPush, EventOK, time.Since(start).Round(time.Millisecond).String())
	return nil
}

// pushURL copies to a store URL once, whichever consumer asks first.
func (e *executor) pushURL(ctx context.Context, url string) error {
	return e.urlPushed[url].run(func() error {
		e.journal.event(Event{Instance: url, Step: StepPush, Status: EventStart})
		if err := e.copier.Copy(ctx, url, e.urlPaths(url)); err != nil {
			e.journal.event(Event{Instance: url, Step: StepPush, Status: EventFailed, Message: err.Error()})
			return err
		}
		e.journal.event(Event{Instance: url, Step: StepPush, Status: EventOK})
		return nil
	})
}

func (e *executor) urlPaths(url string) []string {
	for _, t := range e.plan.Transfers {
		if t.To == url {
			return t.Paths
		}
	}
	return nil
}

// substitute realises n's paths on n from its store.
func (e *executor) substitute(ctx context.Context, n string, s host.Substitution) error {
	s.PublicKey, s.TrustKey, s.ConnectTimeout = e.opts.publicKey, e.opts.Steps.TrustKey, e.opts.Connection.ConnectTimeout
	if slots := e.storeSlots[s.Store]; slots != nil {
		// Queue rather than fail: see storeConcurrency.
		select {
		case slots <- struct{}{}:
		default:
			e.journal.step(n, StepSubstitute, EventInfo, fmt.Sprintf("queued: %d hosts already substitute from %s", storeConcurrency, s.Store))
			select {
			case slots <- struct{}{}:
			case <-ctx.Done():
				return failed(StepSubstitute, ctx.Err())
			}
		}
		defer func() { <-slots }()
	}
	e.journal.step(n, StepSubstitute, EventStart, "from "+s.From)
	start := time.Now()
	err := s.Run(ctx, e.remote, e.inv.Instances[n], e.opts.Connection.Privilege, e.plan.Hosts[n].Paths)
	var f *host.SubstituteFailure
	if errors.As(err, &f) {
		err = e.substituteError(ctx, s, f)
	}
	if err != nil {
		return failed(StepSubstitute, err)
	}
	e.journal.step(n, StepSubstitute, EventOK, time.Since(start).Round(time.Millisecond).String())
	return nil
}

// substituteError explains a failed substitution. A copy on an instance
// store that is not what it claims (changed there, or without the hive's
// signature) is checked there and removed, so the next deploy pushes a
// good one; otherwise the case an operator must act on comes first: the
// host does not trust the key the path is signed with.
func (e *executor) substituteError(ctx context.Context, s host.Substitution, f *host.SubstituteFailure) error {
	if path, kind := nixcmd.BadSubstitute(f.Stderr); path != "" && s.Store != "" && e.opts.publicKey != "" {
		if err := e.repairStoreCopy(ctx, s.Store, path, kind); err != nil {
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
func (e *executor) repairStoreCopy(ctx context.Context, store, path, kind string) error {
	e.mu.Lock()
	r := e.repairs[store+" "+path]
	if r == nil {
		r = &repair{}
		e.repairs[store+" "+path] = r
	}
	e.mu.Unlock()
	r.once.Do(func() {
		verdict, err := host.Repair(ctx, e.remote, e.inv.Instances[store], e.opts.Connection.Privilege, e.opts.publicKey, path)
		what := "is not signed by the hive key"
		if kind == "hash" {
			what = "does not match its hash (it was changed there after it was pushed)"
		}
		bad := fmt.Sprintf("the copy of %s on its store %s %s", path, store, what)
		switch {
		case err != nil:
			r.err = fmt.Errorf("%s, or so the host says; checking it on %s failed: %v", bad, store, err)
		case verdict == "removed":
			e.journal.step(store, StepSubstitute, EventInfo, "removed its bad copy of "+path+" (refused by a consumer); the next deploy pushes it again")
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
