package deploy

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/nix-hive/nix-hive/fanout"
	"github.com/nix-hive/nix-hive/host"
)

// rollbackSucceeded says whether a failed target reverts the rollout.
func (e *executor) rollbackSucceeded() bool {
	return e.opts.RollbackSucceeded || (e.opts.Policy != nil && e.opts.Policy.RollbackSucceeded())
}

// revert returns every host this deploy activated (ended ok) to what it
// ran before, after a target failed: the latest wave first and, within a
// wave, consumers before their stores (the reverse of activation), each
// an activation job back to what the host's own record says ran before
// this deploy's job, confirmed over a new connection as an activation is.
// A host ends rolled back, or failed when its way back failed. Ctrl-C
// before it starts leaves the hosts as they are, and says so.
func (e *executor) revert(ctx, actx context.Context) {
	why := e.reverting
	var todo []string
	for _, n := range e.plan.Order {
		if r := e.journal.result(n); r.Target && r.Status == StatusOK && r.Job != "" {
			todo = append(todo, n)
		}
	}
	if len(todo) == 0 {
		return
	}
	if ctx.Err() != nil {
		e.journal.event(Event{Step: StepRollout, Status: EventFailed,
			Message: fmt.Sprintf("interrupted: %d host(s) this deploy changed were not reverted (%s)", len(todo), why)})
		return
	}
	e.journal.event(Event{Step: StepRollout, Status: EventInfo, Message: fmt.Sprintf("reverting %d host(s), the latest wave first: %s", len(todo), why)})
	// Groups of hosts reverted at once: by wave, latest first; by level
	// (stores 0), consumers first.
	type group struct{ wave, level int }
	var groups []group
	members := map[group][]string{}
	for _, n := range todo {
		h := e.plan.Hosts[n]
		g := group{h.Wave, h.Level}
		if members[g] == nil {
			groups = append(groups, g)
		}
		members[g] = append(members[g], n)
	}
	slices.SortFunc(groups, func(a, b group) int {
		if a.wave != b.wave {
			return b.wave - a.wave
		}
		return b.level - a.level
	})
	reverted := 0
	for _, g := range groups {
		names := members[g]
		fanout.Each(actx, len(names), e.opts.Connection.Parallel, func(ctx context.Context, i int) {
			if e.revertOne(ctx, names[i], why) {
				e.mu.Lock()
				reverted++
				e.mu.Unlock()
			}
		})
	}
	e.journal.event(Event{Step: StepRollout, Status: EventFailed, Message: fmt.Sprintf("reverted %d of %d host(s) this deploy changed", reverted, len(todo))})
}

// revertOne returns host n to what ran before its job, and settles it.
func (e *executor) revertOne(ctx context.Context, n, why string) bool {
	defer e.locks.release(ctx, n)
	r := e.journal.result(n)
	goal := e.opts.Activation.Goal
	msg := "reverted with the rollout: " + why
	e.journal.step(n, StepRollback, EventStart, msg)
	job := host.Job{Goal: goal, Target: host.Restore(r.Job), Confirm: e.opts.Activation.watchdog(goal), Gzip: e.locks.hasGzip(n)}
	st, err := e.pipeline.jobs.Run(ctx, e.inv.Instances[n], job)
	if err == nil {
		err = st.Err()
	}
	if err != nil {
		e.settle(n, "", failed(StepRollback, fmt.Errorf("%s; the way back failed: %w", msg, err)))
		e.record(n)
		return false
	}
	// Confirmed as an activation is: a new login works, and the host
	// runs what it ran before (a boot revert changes only the profile).
	hs, err := host.QueryFresh(ctx, e.remote, n)
	switch {
	case err != nil:
		err = fmt.Errorf("%s; back, but a new connection to it failed: %w", msg, err)
	case goal != host.GoalBoot && hs.Active != r.Before:
		err = fmt.Errorf("%s; after the way back it runs %s, not %s", msg, hs.Active, r.Before)
	}
	e.journal.update(n, func(r *Result) { r.Active = hs.Active })
	if err != nil {
		e.settle(n, "", failed(StepRollback, err))
		e.record(n)
		return false
	}
	e.journal.step(n, StepRollback, EventOK, st.Reason+"; confirmed over a new connection")
	e.settle(n, "", rolledBack(StepRollback, errors.New(msg)))
	e.record(n)
	return true
}
