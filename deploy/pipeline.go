package deploy

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nix-hive/nix-hive/eval"
	"github.com/nix-hive/nix-hive/host"
	"github.com/nix-hive/nix-hive/keys"
)

// A target host goes through: lock, transfer (push, or substitute after
// its store's transfer), wait for its wave and for its store's activation
// in that wave, query, pre-check, activate (a detached job, confirmed over
// a new connection), reboot (--reboot), post-check, rollback. Each step
// returns nil or a hostError; host settles the outcome in one place.

// host runs target n's pipeline from its wave's turn on and settles it.
func (e *executor) host(ctx, actx context.Context, n string) {
	start := time.Now()
	status, err := e.activateHost(ctx, actx, n)
	e.journal.update(n, func(r *Result) { r.Duration = time.Since(start) })
	e.settle(n, status, err)
	e.record(n)
	e.letGo(ctx, n)
	e.finished(n)
}

func (e *executor) activateHost(ctx, actx context.Context, n string) (Status, error) {
	h := e.plan.Hosts[n]
	e.waitForStore(n)
	if err := e.transfers.ensure(ctx, n); err != nil {
		return "", err
	}
	if err := e.locks.lockError(n); err != nil {
		return "", err
	}
	if ctx.Err() != nil {
		return StatusNotStarted, nil // Ctrl-C came first
	}
	before, err := e.idleHost(actx, n)
	if err != nil {
		return "", failed(StepActivate, err)
	}
	e.journal.update(n, func(r *Result) { r.Before, r.Active = before.Active, before.Active })
	batch, err := e.prepareKeys(ctx, n)
	if err != nil {
		return "", err
	}
	if job := checksPending(e.opts.Activation.Goal, before, h.OutPath); job != "" && !e.opts.Activation.Force {
		return e.recheck(actx, n, job, batch)
	}
	if !e.opts.Activation.Force && upToDate(e.opts.Activation.Goal, before, h.OutPath) {
		// Keys are uploaded again (their values may have changed) without
		// a line of their own: a no-op deploy says one thing per host.
		if batch != nil {
			if err := batch.Upload(ctx, ""); err != nil {
				return "", failed(StepKeys, err)
			}
		}
		e.journal.step(n, StepDone, EventOK, Unchanged)
		return StatusUnchanged, nil
	}
	if err := e.checks.pre(ctx, n); err != nil {
		return "", err
	}
	if err := e.uploadKeys(ctx, n, batch, eval.PreActivation); err != nil {
		return "", err
	}
	job, err := e.switchHost(actx, n)
	if err != nil {
		return "", err
	}
	if e.opts.Activation.Goal == host.GoalDryActivate {
		e.journal.step(n, StepDone, EventOK, "dry-activate ran; the host runs what it ran before")
		return StatusDryActivated, nil
	}
	if err := e.uploadKeys(actx, n, batch, eval.PostActivation); err != nil {
		return "", err
	}
	if e.opts.Activation.Reboot {
		if err := e.reboot(actx, n); err != nil {
			return "", err
		}
	}
	if err := e.postCheck(actx, n, job); err != nil {
		return "", err
	}
	e.journal.step(n, StepDone, EventOK, "")
	return StatusOK, nil
}

// prepareKeys reads host n's key values and checks their owners exist on
// the host, writing nothing: a key that cannot be had fails the host
// before anything changes there. nil without keys to upload.
func (e *executor) prepareKeys(ctx context.Context, n string) (*keys.Batch, error) {
	if !e.opts.uploadsKeys(e.inv.Instances[n]) {
		return nil, nil
	}
	b, err := e.opts.uploader.Prepare(ctx, e.inv.Instances[n])
	if err != nil {
		return nil, failed(StepKeys, err)
	}
	return b, nil
}

// uploadKeys uploads the batch's keys of when ("" for all); events name
// keys, never values.
func (e *executor) uploadKeys(ctx context.Context, n string, b *keys.Batch, when string) error {
	if b == nil || len(b.Names(when)) == 0 {
		return nil
	}
	names := strings.Join(b.Names(when), ", ")
	e.journal.step(n, StepKeys, EventStart, names)
	if err := b.Upload(ctx, when); err != nil {
		return failed(StepKeys, err)
	}
	e.journal.step(n, StepKeys, EventOK, names)
	return nil
}

// waitForStore lets a store activate before its consumers in the same
// wave.
func (e *executor) waitForStore(n string) {
	st := e.inv.Instances[n].Store
	if sh, ok := e.plan.Hosts[st]; ok && sh.Target && sh.Wave == e.plan.Hosts[n].Wave {
		<-e.activated[st].done
	}
}

// upToDate reports whether a host already runs path the way the goal
// would leave it, and nix-hive's last activation of path there did not
// fail (a failed switch may have moved the profile without the boot
// loader, say) and passed its checks.
func upToDate(goal host.Goal, hs host.State, path string) bool {
	if hs.Last != nil && hs.Last.Path == path && hs.Last.Status != "ok" {
		return false
	}
	return runs(goal, hs, path)
}

// checksPending is the job whose activation of path the host runs as the
// goal would leave it, but whose post-activation checks never finished
// (nix-hive was stopped during them); "" when there is none.
func checksPending(goal host.Goal, hs host.State, path string) string {
	if l := hs.Last; l != nil && l.Path == path && l.Goal == goal && l.Status == "activated" && runs(goal, hs, path) {
		return l.Job
	}
	return ""
}

// runs reports whether a host runs path the way goal would leave it.
func runs(goal host.Goal, hs host.State, path string) bool {
	switch goal {
	case host.GoalSwitch:
		return hs.Active == path && hs.Profile == path
	case host.GoalBoot:
		return hs.Profile == path
	case host.GoalTest:
		return hs.Active == path
	}
	return false
}

// recheck finishes what an earlier deploy left half-done on host n: job
// activated the wanted system there, and nix-hive stopped before its
// checks ended. The checks run again (keys first, as after an
// activation) and the policy's failure rule applies, as if the deploy
// had never stopped.
func (e *executor) recheck(ctx context.Context, n, job string, batch *keys.Batch) (Status, error) {
	e.journal.update(n, func(r *Result) { r.Job = job })
	e.journal.step(n, StepPostCheck, EventInfo, "activation job "+job+" of an earlier deploy activated this system, and its checks did not finish: running them again")
	if batch != nil {
		if err := e.uploadKeys(ctx, n, batch, ""); err != nil {
			return "", err
		}
	}
	check := e.postCheck
	if !e.checks.has("post") {
		// The policy has no post-check any more: nothing to wait for.
		check = func(ctx context.Context, n, job string) error { return e.checks.mark(ctx, n, job, "ok") }
	}
	if err := check(ctx, n, job); err != nil {
		return "", err
	}
	e.journal.step(n, StepDone, EventOK, "")
	return StatusOK, nil
}

// idleHost is what host n runs: as read when its deploy lock was taken
// (nothing but this deploy changes it while the lock is held). When an
// activation job of an earlier deploy ran there then (nix-hive was killed,
// say), it first waits for that job to end and says how it ended.
func (e *executor) idleHost(ctx context.Context, n string) (host.State, error) {
	hs, _ := e.locks.state(n)
	if hs.Running == "" {
		return hs, nil
	}
	e.journal.step(n, StepActivate, EventInfo, "waiting for activation job "+hs.Running+" of an earlier deploy to end")
	st, err := e.jobs.Follow(ctx, n, hs.Running)
	if err != nil {
		return hs, fmt.Errorf("activation job %s of an earlier deploy is still running: %w", hs.Running, err)
	}
	e.journal.step(n, StepActivate, EventInfo, "earlier activation job "+hs.Running+" ended: "+st.String())
	return host.Query(ctx, e.remote, n)
}

// switchHost runs the activation job and returns its id. With magic
// rollback (switch, test) the job waits for a confirmation over a new
// connection and otherwise returns to what ran before.
func (e *executor) switchHost(ctx context.Context, n string) (string, error) {
	goal, path := e.opts.Activation.Goal, e.plan.Hosts[n].OutPath
	job := host.Job{Goal: goal, Target: path, Confirm: e.opts.Activation.watchdog(goal), Gzip: e.locks.hasGzip(n), Checks: e.checks.has("post")}
	e.setActivating(n, true)
	defer e.setActivating(n, false)
	e.journal.step(n, StepActivate, EventStart, string(goal))
	st, err := e.jobs.Run(ctx, e.inv.Instances[n], job)
	e.journal.update(n, func(r *Result) { r.Job = st.ID })
	var je *host.JobError
	switch {
	case errors.As(err, &je):
		return "", unknown(StepActivate, err)
	case err != nil:
		return "", failed(StepActivate, err)
	}
	if err := st.Err(); err != nil {
		if st.RolledBack() {
			e.journal.update(n, func(r *Result) { r.Active = r.Before })
			return "", rolledBack(StepActivate, err)
		}
		return "", failed(StepActivate, err)
	}
	if goal != host.GoalBoot && goal != host.GoalDryActivate {
		e.journal.update(n, func(r *Result) { r.Active = path })
	}
	e.journal.step(n, StepActivate, EventOK, "")
	return st.ID, nil
}

func (e *executor) setActivating(n string, on bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if on {
		e.activating[n] = true
	} else {
		delete(e.activating, n)
	}
}

// postCheck runs the policy's post-activation check on host n and, when
// it fails and the policy says so, returns the host to what ran before
// job.
func (e *executor) postCheck(ctx context.Context, n, job string) error {
	rollBack, err := e.checks.post(ctx, n, job)
	if rollBack {
		return e.rollback(ctx, n, job, err)
	}
	return err
}

// rollback returns host n to exactly what ran before job: the profile
// generation and the active system recorded on the host when job
// started, as the goal affects them (test never touches the profile).
func (e *executor) rollback(ctx context.Context, n, job string, why error) error {
	e.journal.step(n, StepRollback, EventStart, why.Error())
	st, err := e.jobs.Run(ctx, e.inv.Instances[n], host.Job{Goal: e.opts.Activation.Goal, Target: host.Restore(job), Gzip: e.locks.hasGzip(n)})
	if err != nil {
		return unknown(StepRollback, fmt.Errorf("%v; rollback: %w", why, err))
	}
	if err := st.Err(); err != nil {
		return failed(StepRollback, fmt.Errorf("%v; rollback failed: %w", why, err))
	}
	e.journal.update(n, func(r *Result) { r.Active = r.Before })
	e.journal.step(n, StepRollback, EventOK, st.Reason)
	return rolledBack(StepRollback, why)
}
