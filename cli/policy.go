package cli

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/nix-hive/nix-hive/eval"
	"github.com/nix-hive/nix-hive/starlark"
	"github.com/nix-hive/nix-hive/transport"
)

// policyFile returns the rollout policy to use: --policy, else hive.star
// beside the hive, else "" (no policy: one wave, every host attempted).
func (g *Globals) policyFile() (string, error) {
	if g.Policy != "" {
		if _, err := os.Stat(g.Policy); err != nil {
			return "", fmt.Errorf("--policy: %w", err)
		}
		return g.Policy, nil
	}
	src, err := g.source()
	if err != nil {
		return "", err
	}
	p := filepath.Join(src.Dir, "hive.star")
	if _, err := os.Stat(p); errors.Is(err, fs.ErrNotExist) {
		return "", nil
	} else if err != nil {
		return "", fmt.Errorf("policy %s: %w", p, err)
	}
	return p, nil
}

// loadPolicy loads the rollout policy, if any. runner may be nil when no
// check will run (plan).
func (g *Globals) loadPolicy(ctx context.Context, runner starlark.Runner) (*starlark.Policy, error) {
	file, err := g.policyFile()
	if err != nil || file == "" {
		return nil, err
	}
	env := starlark.Env{
		Runner: runner,
		Log: func(instance, msg string) {
			who := "policy"
			if instance != "" {
				who = instance
			}
			fmt.Fprintf(g.logWriter(), "%s: %s\n", who, msg)
		},
	}
	return starlark.Load(ctx, file, nil, env)
}

func policyInstance(in *eval.Instance) starlark.Instance {
	return starlark.Instance{Name: in.Name, System: in.System, Host: in.Host, Store: in.Store,
		Jump: in.Jump, Tags: in.Tags, Meta: in.Meta}
}

// applyPolicy narrows targets with select() and orders them with waves().
func applyPolicy(ctx context.Context, p *starlark.Policy, inv *eval.Inventory, targets []string) ([]string, []starlark.Wave, error) {
	in := make([]starlark.Instance, len(targets))
	for i, t := range targets {
		in[i] = policyInstance(inv.Instances[t])
	}
	sel, err := p.Select(ctx, in)
	if err != nil {
		return nil, nil, err
	}
	if len(sel) == 0 {
		return nil, nil, fmt.Errorf("%s: select() chose no instance", p.File)
	}
	waves, err := p.Waves(ctx, sel)
	if err != nil {
		return nil, nil, err
	}
	selected := make([]string, len(sel))
	for i, s := range sel {
		selected[i] = s.Name
	}
	return selected, waves, nil
}

func waveNames(waves []starlark.Wave) [][]string {
	out := make([][]string, len(waves))
	for i, w := range waves {
		for _, in := range w.Instances {
			out[i] = append(out[i], in.Name)
		}
	}
	return out
}

// policyChecks adapts a Starlark policy to the deploy executor.
type policyChecks struct {
	p   *starlark.Policy
	inv *eval.Inventory
	// waves are the policy's waves, indexed like the plan's: a store the
	// plan moved into an earlier wave does not change which wave is a
	// canary wave.
	waves []starlark.Wave
}

func newPolicyChecks(p *starlark.Policy, inv *eval.Inventory, policyWaves []starlark.Wave, planWaves [][]string) *policyChecks {
	canary := map[string]bool{}
	for _, w := range policyWaves {
		for _, in := range w.Instances {
			canary[in.Name] = w.Canary
		}
	}
	waves := make([]starlark.Wave, len(planWaves))
	for i, pw := range planWaves {
		for _, n := range pw {
			waves[i].Canary = waves[i].Canary || canary[n]
		}
	}
	return &policyChecks{p: p, inv: inv, waves: waves}
}

func (c *policyChecks) verdict(r starlark.CheckResult) (bool, string) {
	if r.OK {
		return true, strings.Join(lastN(r.Logs, 1), "")
	}
	return false, r.Message
}

func lastN(xs []string, n int) []string {
	if len(xs) > n {
		return xs[len(xs)-n:]
	}
	return xs
}

func (c *policyChecks) Pre(ctx context.Context, n string) (bool, string) {
	if !c.p.HasPre {
		return true, ""
	}
	return c.verdict(c.p.PreActivate(ctx, policyInstance(c.inv.Instances[n])))
}

func (c *policyChecks) Post(ctx context.Context, n string) (bool, string) {
	if !c.p.HasPost {
		return true, ""
	}
	return c.verdict(c.p.PostActivate(ctx, policyInstance(c.inv.Instances[n])))
}

func (c *policyChecks) ShouldStop(wave, waveFailures, totalFailures int) bool {
	var w starlark.Wave
	if wave < len(c.waves) {
		w = c.waves[wave]
	}
	return c.p.ShouldStop(w, waveFailures, totalFailures)
}

func (c *policyChecks) Rollback() bool { return c.p.OnFailure == starlark.OnFailureRollback }

// poolRunner lets ctx.run use the pooled SSH connections.
type poolRunner struct{ pool *transport.Pool }

func (r poolRunner) Run(ctx context.Context, instance, cmd string) (string, string, int, error) {
	stdout, stderr, code, err := r.pool.Output(ctx, instance, cmd)
	return string(stdout), string(stderr), code, err
}
