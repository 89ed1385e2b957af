package deploy

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/nix-hive/nix-hive/eval"
	"github.com/nix-hive/nix-hive/keys"
	"github.com/nix-hive/nix-hive/nixcmd"
	"github.com/nix-hive/nix-hive/starlark"
	"github.com/nix-hive/nix-hive/state"
	"github.com/nix-hive/nix-hive/transport"
)

// Request is what to plan: targets of a hive, the rollout policy (nil
// without one), and how to find the systems' paths.
type Request struct {
	Hive     *eval.Hive
	State    *state.File
	Policy   *starlark.Policy
	Patterns []string
	Paths    eval.PathMode
}

// Prepared is a plan with what it was made from.
type Prepared struct {
	Hive   *eval.Hive
	Plan   *Plan
	Policy *starlark.Policy
	// Waves are the policy's waves (nil without a policy), indexed like
	// the policy returned them; Plan.WaveOrigin maps plan waves to them.
	Waves []starlark.Wave
}

// Prepare selects the targets, lets the policy narrow and order them,
// finds (builds, with eval.Build) their systems and plans. A policy error
// or a missing build stops here, before any host is touched.
func Prepare(ctx context.Context, r Request) (*Prepared, error) {
	inv := r.Hive.Inventory
	targets, err := inv.Select(r.Patterns)
	if err != nil {
		return nil, err
	}
	var waves []starlark.Wave
	if r.Policy != nil {
		if targets, waves, err = applyPolicy(ctx, r.Policy, inv, targets); err != nil {
			return nil, err
		}
	}
	systems := inv.SystemsOf(targets)
	builds, err := r.Hive.Paths(ctx, r.State, systems, r.Paths)
	if err != nil {
		return nil, err
	}
	if missing := builds.Missing(systems); r.Paths == eval.Reuse && len(missing) > 0 {
		return nil, fmt.Errorf("--no build: no valid build of %s in %s; run without --no build", strings.Join(missing, ", "), r.State.Path())
	}
	var waveList [][]string
	if waves != nil {
		waveList = waveNames(waves)
	}
	plan, err := Make(inv, targets, builds.Paths, waveList)
	if err != nil {
		return nil, err
	}
	return &Prepared{Hive: r.Hive, Plan: plan, Policy: r.Policy, Waves: waves}, nil
}

// Unsigned is the hive error of a plan whose consumers substitute from a
// store while the hive has no signing key: they would refuse every
// closure. nil when the hive signs, or nothing substitutes.
func (prep *Prepared) Unsigned() error {
	if pk, err := prep.Hive.PublicKey(); err != nil || pk != "" {
		return err
	}
	subs := prep.Plan.substituting()
	if len(subs) == 0 {
		return nil
	}
	verb := "substitute"
	if len(subs) == 1 {
		verb = "substitutes"
	}
	return eval.InHive(fmt.Errorf("%s: %s %s from a store, which needs closures signed by the hive, and the hive has no signing key: run `nix-hive keygen` and set signing.keyFile = \"keys/hive.sec\";",
		prep.Hive.Src.File, countNames(subs, "instance"), verb))
}

// Deploy carries out a prepared plan: closures leave through nix copy with
// the pool's OpenSSH configuration, everything else goes over the pool,
// policy checks included.
func Deploy(ctx context.Context, prep *Prepared, pool *transport.Pool, nix *nixcmd.Runner, opts Options) (*Report, error) {
	var err error
	if opts.PublicKey, err = prep.Hive.PublicKey(); err != nil {
		return nil, err
	}
	if !opts.SkipPush {
		// Consumers require signatures; without a hive key they would fail
		// one by one, each with advice that cannot help.
		if err := prep.Unsigned(); err != nil {
			return nil, err
		}
	}
	copier, err := NewNixCopier(nix, pool, prep.Hive.Inventory, opts.Privilege)
	if err != nil {
		return nil, err
	}
	defer copier.Close()
	return execute(ctx, prep, pool, copier, opts)
}

// Hosts is what a deploy needs of its way to the hosts: commands (with
// policy checks among them) and key uploads.
type Hosts interface {
	Remote
	keys.Host
}

// execute runs the plan through h, with the policy's checks and the
// hive's keys.
func execute(ctx context.Context, prep *Prepared, h Hosts, copier Copier, opts Options) (*Report, error) {
	var err error
	h = opts.Privilege.Hosts(h)
	if prep.Policy != nil {
		opts.Policy = newPolicyChecks(prep.Policy.WithRunner(remoteRunner{h}), prep.Hive.Inventory, prep.Waves, prep.Plan)
	}
	if !opts.SkipKeys {
		if opts.Keys, err = NewKeys(ctx, prep.Hive, h, prep.Plan.Targets, opts.Privilege, opts.KeyTimeout); err != nil {
			return nil, err
		}
	}
	return Execute(ctx, prep.Plan, prep.Hive.Inventory, h, copier, opts), nil
}

// NewKeys is the uploader of the hive's keys over pool; the text keys of
// targets are evaluated now, in one go. A key's command without a timeout
// of its own is stopped after timeout (0: keys.DefaultTimeout).
func NewKeys(ctx context.Context, h *eval.Hive, hosts keys.Host, targets []string, priv *Privilege, timeout time.Duration) (*keys.Uploader, error) {
	if timeout <= 0 {
		timeout = keys.DefaultTimeout
	}
	v := keys.NewValues(h, timeout)
	var withText []string
	for _, t := range targets {
		for _, k := range h.Inventory.Instances[t].Keys {
			if k.Source == "text" {
				withText = append(withText, t)
				break
			}
		}
	}
	if len(withText) > 0 {
		if err := v.LoadTexts(ctx, withText); err != nil {
			return nil, err
		}
	}
	return &keys.Uploader{Host: hosts, Values: v, Root: priv.Root}, nil
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

// policyChecks adapts a Starlark policy to the executor. Which wave is a
// canary wave is the policy's decision (starlark.Wave.Canary): a plan
// wave is the policy's wave it came from, whatever stores the plan moved
// into it.
type policyChecks struct {
	p     *starlark.Policy
	inv   *eval.Inventory
	waves []starlark.Wave // indexed like the plan's waves
}

func newPolicyChecks(p *starlark.Policy, inv *eval.Inventory, policyWaves []starlark.Wave, plan *Plan) *policyChecks {
	waves := make([]starlark.Wave, len(plan.Waves))
	for i, from := range plan.WaveOrigin {
		if from < len(policyWaves) {
			waves[i] = policyWaves[from]
		}
	}
	return &policyChecks{p: p, inv: inv, waves: waves}
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
func (c *policyChecks) HasCheck(which string) bool {
	switch which {
	case "pre":
		return c.p.HasPre
	case "post":
		return c.p.HasPost
	}
	return false
}

func (c *policyChecks) Pre(ctx context.Context, n string) (bool, string) {
	if !c.p.HasPre {
		return true, ""
	}
	return verdict(c.p.PreActivate(ctx, policyInstance(c.inv.Instances[n])))
}

func (c *policyChecks) Post(ctx context.Context, n string) (bool, string) {
	if !c.p.HasPost {
		return true, ""
	}
	return verdict(c.p.PostActivate(ctx, policyInstance(c.inv.Instances[n])))
}

func (c *policyChecks) ShouldStop(wave, waveFailures, totalFailures int) bool {
	var w starlark.Wave
	if wave < len(c.waves) {
		w = c.waves[wave]
	}
	return c.p.ShouldStop(w, waveFailures, totalFailures)
}

func (c *policyChecks) Rollback() bool { return c.p.OnFailure == starlark.OnFailureRollback }

// remoteRunner lets ctx.run use the deploy's connections.
type remoteRunner struct{ remote Remote }

func (r remoteRunner) Run(ctx context.Context, instance, cmd string) (string, string, int, error) {
	var o, e lockedBuffer
	code, err := r.remote.Run(ctx, instance, cmd, nil, &o, &e)
	return o.String(), e.String(), code, err
}

// substituting lists the targets that substitute from a store or cache.
func (p *Plan) substituting() []string {
	var out []string
	for _, n := range p.Order {
		if h := p.Hosts[n]; h.Target && (h.Source.Kind == SourceStore || h.Source.Kind == SourceCache) {
			out = append(out, n)
		}
	}
	return out
}

// countNames is "www-1" or "3 instances (www-1, www-2, www-3)", at most
// five names.
func countNames(names []string, noun string) string {
	if len(names) == 1 {
		return noun + " " + names[0]
	}
	shown := names
	if len(shown) > 5 {
		shown = append(append([]string(nil), shown[:5]...), "...")
	}
	return fmt.Sprintf("%d %ss (%s)", len(names), noun, strings.Join(shown, ", "))
}
