package deploy

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/nix-hive/nix-hive/eval"
	"github.com/nix-hive/nix-hive/host"
	"github.com/nix-hive/nix-hive/keys"
	"github.com/nix-hive/nix-hive/plan"
)

// A target host goes through: lock, transfer (push, or substitute after
// its store's transfer), wait for its wave and for its store's activation
// in that wave, query, pre-check, activate (a detached job, confirmed over
// a new connection), reboot (--reboot), post-check, rollback. The first
// three are the transfers' and the executor's; the rest are here. Each
// step returns nil or a hostError; the executor's host settles the
// outcome in one place.

// pipeline runs each target's steps from its turn in its wave to its
// outcome: the deploy lock's verdict, keys, the activation job
// (confirmed, and followed when contact is lost), reboot, the policy's
// checks and the rollback they may call for. It runs the hosts' jobs and
// reports every step; it is apart from the executor, whose waves decide
// when a host's turn comes and which settles what an outcome means for
// the rollout and hive.state.
type pipeline struct {
	plan      *plan.Plan
	inv       *eval.Inventory
	remote    host.Remote
	opts      Options
	jobs      *host.Jobs
	journal   *journal
	locks     *hostLocks
	transfers *transfers
	checks    *checks

	mu         sync.Mutex
	activating map[string]bool
}

func newPipeline(p *plan.Plan, inv *eval.Inventory, remote host.Remote, opts Options, j *journal, locks *hostLocks, t *transfers) *pipeline {
	pl := &pipeline{plan: p, inv: inv, remote: remote, opts: opts, journal: j, locks: locks, transfers: t,
		activating: map[string]bool{}}
	pl.jobs = newJobs(remote, opts.Activation, opts.Connection, opts.local, pl.notice)
	pl.checks = &checks{policy: opts.Policy, jobs: pl.jobs, inv: inv, journal: j}
	return pl
}

// activate takes target n from its turn in its wave to how it ends: a
// Status, or the hostError that stopped it.
func (p *pipeline) activate(ctx, actx context.Context, n string) (Status, error) {
	h := p.plan.Hosts[n]
	if err := p.transfers.ensure(ctx, n); err != nil {
		return "", err
	}
	if err := p.locks.lockError(n); err != nil {
		return "", err
	}
	if ctx.Err() != nil {
		return StatusNotStarted, nil // Ctrl-C came first
	}
	if h.Specialisation != "" && p.opts.Activation.Goal == host.GoalBoot {
		return "", failedf(StepActivate, "specialisation %q: --goal boot makes the boot loader start the system itself, never one of its specialisations (switch and test activate them); nothing changed", h.Specialisation)
	}
	before, err := p.idleHost(actx, n)
	if err != nil {
		return "", failed(StepActivate, err)
	}
	p.journal.update(n, func(r *Result) { r.Before, r.Active = before.Active, before.Active })
	batch, err := p.prepareKeys(ctx, n)
	if err != nil {
		return "", err
	}
	// A reboot is only done once the host runs what it booted: a boot
	// that never came up is neither up to date nor a check to rerun.
	rebooted := !p.opts.Activation.Reboot || before.Active == h.OutPath
	if job := checksPending(p.opts.Activation.Goal, before, h); job != "" && !p.opts.Activation.Force && rebooted {
		return p.recheck(actx, n, job, batch)
	}
	if !p.opts.Activation.Force && rebooted && upToDate(p.opts.Activation.Goal, before, h) {
		// Keys are uploaded again (their values may have changed) without
		// a line of their own: a no-op deploy says one thing per host.
		if batch != nil {
			if err := batch.Upload(ctx, ""); err != nil {
				return "", failed(StepKeys, err)
			}
		}
		p.journal.step(n, StepDone, EventOK, Unchanged)
		return StatusUnchanged, nil
	}
	if err := p.checks.pre(ctx, n); err != nil {
		return "", err
	}
	loader, err := p.bootLoader(ctx, n)
	if err != nil {
		return "", err
	}
	if err := p.uploadKeys(ctx, n, batch, eval.PreActivation); err != nil {
		return "", err
	}
	job, err := p.switchHost(actx, n, loader != "")
	if err != nil {
		return "", err
	}
	if p.opts.Activation.Goal == host.GoalDryActivate {
		p.journal.step(n, StepDone, EventOK, "dry-activate ran; the host runs what it ran before")
		return StatusDryActivated, nil
	}
	if err := p.uploadKeys(actx, n, batch, eval.PostActivation); err != nil {
		return "", err
	}
	if p.opts.Activation.Reboot {
		if err := p.reboot(ctx, actx, n, job, before.Active, loader); err != nil {
			return "", err
		}
	}
	if err := p.postCheck(actx, n, job); err != nil {
		return "", err
	}
	p.journal.step(n, StepDone, EventOK, "")
	return StatusOK, nil
}

// prepareKeys reads host n's key values and checks their owners exist on
// the host, writing nothing: a key that cannot be had fails the host
// before anything changes there. nil without keys to upload.
func (p *pipeline) prepareKeys(ctx context.Context, n string) (*keys.Batch, error) {
	if !p.opts.uploadsKeys(p.inv.Instances[n]) {
		return nil, nil
	}
	b, err := p.opts.uploader.Prepare(ctx, p.inv.Instances[n])
	if err != nil {
		return nil, failed(StepKeys, err)
	}
	return b, nil
}

// uploadKeys uploads the batch's keys of when ("" for all); events name
// keys, never values.
func (p *pipeline) uploadKeys(ctx context.Context, n string, b *keys.Batch, when string) error {
	if b == nil || len(b.Names(when)) == 0 {
		return nil
	}
	names := strings.Join(b.Names(when), ", ")
	p.journal.step(n, StepKeys, EventStart, names)
	if err := b.Upload(ctx, when); err != nil {
		return failed(StepKeys, err)
	}
	p.journal.step(n, StepKeys, EventOK, names)
	return nil
}

// upToDate reports whether a host already runs h's system the way the
// goal would leave it, and nix-hive's last activation of it there did
// not fail (a failed switch may have moved the profile without the boot
// loader, say) and passed its checks.
func upToDate(goal host.Goal, hs host.State, h *plan.Host) bool {
	if hs.Last != nil && hs.Last.Path == h.OutPath && hs.Last.Status != "ok" {
		return false
	}
	return runs(goal, hs, h)
}

// checksPending is the job whose activation of h's system the host runs
// as the goal would leave it, but whose post-activation checks never
// finished (nix-hive was stopped during them); "" when there is none.
func checksPending(goal host.Goal, hs host.State, h *plan.Host) string {
	if l := hs.Last; l != nil && l.Path == h.OutPath && l.Goal == goal && l.Status == "activated" && runs(goal, hs, h) {
		return l.Job
	}
	return ""
}

// runs reports whether a host runs h's system the way goal would leave
// it: the profile holds the system, and what runs is the system or the
// specialisation h activates.
//
// Profiles beside the system one are as the host's record says nix-hive
// set them last, for goals that set profiles (test sets none).
func runs(goal host.Goal, hs host.State, h *plan.Host) bool {
	switch goal {
	case host.GoalSwitch:
		return hs.Active == h.Runs() && hs.Profile == h.OutPath && hs.Profiles == host.ProfileWords(h.Profiles)
	case host.GoalBoot:
		return hs.Profile == h.OutPath && hs.Profiles == host.ProfileWords(h.Profiles)
	case host.GoalTest:
		return hs.Active == h.Runs()
	}
	return false
}

// recheck finishes what an earlier deploy left half-done on host n: job
// activated the wanted system there, and nix-hive stopped before its
// checks ended. The checks run again (keys first, as after an
// activation) and the policy's failure rule applies, as if the deploy
// had never stopped.
func (p *pipeline) recheck(ctx context.Context, n, job string, batch *keys.Batch) (Status, error) {
	p.journal.update(n, func(r *Result) { r.Job = job })
	p.journal.step(n, StepPostCheck, EventInfo, "activation job "+job+" of an earlier deploy activated this system, and its checks did not finish: running them again")
	if batch != nil {
		if err := p.uploadKeys(ctx, n, batch, ""); err != nil {
			return "", err
		}
	}
	check := p.postCheck
	if !p.checks.has("post") {
		// The policy has no post-check any more: nothing to wait for.
		check = func(ctx context.Context, n, job string) error { return p.checks.mark(ctx, n, job, "ok") }
	}
	if err := check(ctx, n, job); err != nil {
		return "", err
	}
	p.journal.step(n, StepDone, EventOK, "")
	return StatusOK, nil
}

// idleHost is what host n runs: as read when its deploy lock was taken
// (nothing but this deploy changes it while the lock is held). When an
// activation job of an earlier deploy ran there then (nix-hive was killed,
// say), it first waits for that job to end and says how it ended.
func (p *pipeline) idleHost(ctx context.Context, n string) (host.State, error) {
	hs, _ := p.locks.state(n)
	if hs.Running == "" {
		return hs, nil
	}
	p.journal.step(n, StepActivate, EventInfo, "waiting for activation job "+hs.Running+" of an earlier deploy to end")
	st, err := p.jobs.Follow(ctx, n, hs.Running)
	if err != nil {
		return hs, fmt.Errorf("activation job %s of an earlier deploy is still running: %w", hs.Running, err)
	}
	p.journal.step(n, StepActivate, EventInfo, "earlier activation job "+hs.Running+" ended: "+st.String())
	return host.Query(ctx, p.remote, n)
}

// switchHost runs the activation job and returns its id. With magic
// rollback (switch, test) the job waits for a confirmation over a new
// connection and otherwise returns to what ran before.
//
// With boot, the boot fallback confirms the new system's boot: the job
// records the activation as not yet good until it has (Jobs.Mark).
func (p *pipeline) switchHost(ctx context.Context, n string, boot bool) (string, error) {
	h := p.plan.Hosts[n]
	goal, path := p.opts.Activation.Goal, h.OutPath
	job := host.Job{Goal: goal, Target: path, Confirm: p.opts.Activation.watchdog(goal), Gzip: p.locks.hasGzip(n), Checks: p.checks.has("post") || boot,
		Specialisation: h.Specialisation, Profiles: h.Profiles}
	p.setActivating(n, true)
	defer p.setActivating(n, false)
	p.journal.step(n, StepActivate, EventStart, string(goal))
	st, err := p.jobs.Run(ctx, p.inv.Instances[n], job)
	p.journal.update(n, func(r *Result) { r.Job = st.ID })
	var je *host.JobError
	switch {
	case errors.As(err, &je):
		return "", unknown(StepActivate, err)
	case err != nil:
		return "", failed(StepActivate, err)
	}
	if err := st.Err(); err != nil {
		if st.RolledBack() {
			p.journal.update(n, func(r *Result) { r.Active = r.Before })
			return "", rolledBack(StepActivate, err)
		}
		return "", failed(StepActivate, err)
	}
	if goal != host.GoalBoot && goal != host.GoalDryActivate {
		p.journal.update(n, func(r *Result) { r.Active = h.Runs() })
	}
	p.journal.step(n, StepActivate, EventOK, "")
	return st.ID, nil
}

func (p *pipeline) setActivating(n string, on bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if on {
		p.activating[n] = true
	} else {
		delete(p.activating, n)
	}
}

// activations are the hosts whose activation job runs now, in no order.
func (p *pipeline) activations() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var names []string
	for n := range p.activating {
		names = append(names, n)
	}
	return names
}

// notice reports what the host's jobs tell about host n as its events.
func (p *pipeline) notice(n string, what host.Notice, msg string) {
	switch what {
	case host.ContactLost:
		p.journal.step(n, StepActivate, EventInfo, msg)
	case host.Confirmed:
		p.journal.step(n, StepConfirm, EventOK, msg)
	case host.ConfirmRetry:
		p.journal.step(n, StepConfirm, EventInfo, msg)
	}
}

// postCheck runs the policy's post-activation check on host n and, when
// it fails and the policy says so, returns the host to what ran before
// job.
func (p *pipeline) postCheck(ctx context.Context, n, job string) error {
	rollBack, err := p.checks.post(ctx, n, job)
	if rollBack {
		return p.rollback(ctx, n, job, err)
	}
	return err
}

// rollback returns host n to exactly what ran before job: the profile
// generation and the active system recorded on the host when job
// started, as the goal affects them (test never touches the profile).
func (p *pipeline) rollback(ctx context.Context, n, job string, why error) error {
	p.journal.step(n, StepRollback, EventStart, why.Error())
	st, err := p.jobs.Run(ctx, p.inv.Instances[n], host.Job{Goal: p.opts.Activation.Goal, Target: host.Restore(job), Gzip: p.locks.hasGzip(n)})
	if err != nil {
		return unknown(StepRollback, fmt.Errorf("%v; rollback: %w", why, err))
	}
	if err := st.Err(); err != nil {
		return failed(StepRollback, fmt.Errorf("%v; rollback failed: %w", why, err))
	}
	p.journal.update(n, func(r *Result) { r.Active = r.Before })
	p.journal.step(n, StepRollback, EventOK, st.Reason)
	return rolledBack(StepRollback, why)
}
