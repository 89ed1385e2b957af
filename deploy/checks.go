package deploy

import (
	"context"
	"errors"
	"fmt"

	"github.com/nix-hive/nix-hive/eval"
	"github.com/nix-hive/nix-hive/host"
)

// checks are the rollout policy's checks around activation: whether the
// policy has each, running it, its verdict in the host's Result, and the
// mark on the host that says how an activation's checks ended. They
// answer to the policy, not to the host's jobs, so they are apart from
// the pipeline, which asks them at its pre- and post-check steps and
// carries out the rollback a failed post-check may call for.
type checks struct {
	policy  Policy // nil: no checks
	jobs    *host.Jobs
	inv     *eval.Inventory
	journal *journal
}

// has reports whether the policy has the check ("pre" or "post"): a
// summary must not say "pre: ok" of a check that does not exist. Policies
// that cannot tell are asked.
func (c *checks) has(which string) bool {
	if c.policy == nil {
		return false
	}
	if d, ok := c.policy.(interface{ HasCheck(string) bool }); ok {
		return d.HasCheck(which)
	}
	return true
}

func (c *checks) pre(ctx context.Context, n string) error {
	if !c.has("pre") {
		return nil
	}
	c.journal.step(n, StepPreCheck, EventStart, "")
	ok, msg := c.policy.Pre(ctx, n)
	c.add(n, "pre", ok, msg)
	if !ok {
		return skipped(StepPreCheck, "pre-check failed: "+msg)
	}
	c.journal.step(n, StepPreCheck, EventOK, msg)
	return nil
}

// post runs the policy's post-activation check and records its outcome
// on the host (job's activation was recorded "activated" until now). A
// failed check ends the host, unless the policy rolls it back: then
// rollBack is set and err says why, for the pipeline, which runs the
// host's jobs, to take the host back.
func (c *checks) post(ctx context.Context, n, job string) (rollBack bool, err error) {
	if !c.has("post") {
		return false, nil // the job recorded its activation ok
	}
	c.journal.step(n, StepPostCheck, EventStart, "")
	ok, msg := c.policy.Post(ctx, n)
	c.add(n, "post", ok, msg)
	if ok {
		if err := c.mark(ctx, n, job, "ok"); err != nil {
			return false, err
		}
		c.journal.step(n, StepPostCheck, EventOK, msg)
		return false, nil
	}
	why := errors.New("post-check failed: " + msg)
	if !c.policy.Rollback() {
		if err := c.mark(ctx, n, job, "failed"); err != nil {
			return false, failed(StepPostCheck, fmt.Errorf("%v; %w", why, err))
		}
		return false, failed(StepPostCheck, why)
	}
	c.journal.step(n, StepPostCheck, EventFailed, msg)
	return true, why
}

func (c *checks) add(n, which string, ok bool, msg string) {
	s := which + ": ok"
	if !ok {
		s = which + ": failed"
	}
	if msg != "" {
		s += " (" + msg + ")"
	}
	c.journal.update(n, func(r *Result) { r.Checks = append(r.Checks, s) })
}

// mark records how job's checks ended on host n. A host whose record
// cannot be written fails: its checks would run again next time, and the
// operator should know why.
func (c *checks) mark(ctx context.Context, n, job, status string) error {
	if err := c.jobs.Mark(ctx, c.inv.Instances[n], job, status); err != nil {
		return failed(StepPostCheck, err)
	}
	return nil
}
