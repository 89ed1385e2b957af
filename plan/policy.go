package plan

import (
	"context"

	"github.com/nix-hive/nix-hive/eval"
	"github.com/nix-hive/nix-hive/starlark"
)

// Checks is a prepared plan's policy as the executor asks it (it
// implements deploy.Policy): the checks around activation, and whether a
// failure stops the rollout. Which wave is a canary wave is the policy's
// decision (starlark.Wave.Canary): a plan wave is the policy's wave it
// came from, whatever stores the plan moved into it.
type Checks struct {
	p     *starlark.Policy
	inv   *eval.Inventory
	waves []starlark.Wave // indexed like the plan's waves
}

// Checks is prep's policy for the executor, its ctx.run going through
// run. prep must have a policy.
func (prep *Prepared) Checks(run starlark.Runner) *Checks {
	waves := make([]starlark.Wave, len(prep.Plan.Waves))
	for i, from := range prep.Plan.WaveOrigin {
		if from < len(prep.Waves) {
			waves[i] = prep.Waves[from]
		}
	}
	return &Checks{p: prep.Policy.WithRunner(run), inv: prep.Hive.Inventory, waves: waves}
}

func verdict(r starlark.CheckResult) (bool, string) {
	if r.OK {
		if n := len(r.Logs); n > 0 {
			return true, r.Logs[n-1]
		}
		return true, ""
	}
	return false, r.Message
}

// HasCheck says which checks the policy defines.
func (c *Checks) HasCheck(which string) bool {
	switch which {
	case "pre":
		return c.p.HasPre
	case "post":
		return c.p.HasPost
	}
	return false
}

// Pre runs the policy's pre-activation check of instance n.
func (c *Checks) Pre(ctx context.Context, n string) (bool, string) {
	if !c.p.HasPre {
		return true, ""
	}
	return verdict(c.p.PreActivate(ctx, policyInstance(c.inv.Instances[n])))
}

// Post runs the policy's post-activation check of instance n.
func (c *Checks) Post(ctx context.Context, n string) (bool, string) {
	if !c.p.HasPost {
		return true, ""
	}
	return verdict(c.p.PostActivate(ctx, policyInstance(c.inv.Instances[n])))
}

// ShouldStop says whether the failures so far stop the rollout after a
// host of plan wave wave ended.
func (c *Checks) ShouldStop(wave, waveFailures, totalFailures int) bool {
	var w starlark.Wave
	if wave < len(c.waves) {
		w = c.waves[wave]
	}
	return c.p.ShouldStop(w, waveFailures, totalFailures)
}

// Rollback says whether a host whose post-check failed goes back.
func (c *Checks) Rollback() bool { return c.p.OnFailure == starlark.OnFailureRollback }

// RollbackSucceeded says whether a failed host returns every host the
// rollout changed to what it ran before (rollback_succeeded).
func (c *Checks) RollbackSucceeded() bool { return c.p.RollbackSucceeded }
