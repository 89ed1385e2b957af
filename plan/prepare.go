package plan

import (
	"context"
	"fmt"
	"strings"

	"github.com/nix-hive/nix-hive/eval"
	"github.com/nix-hive/nix-hive/starlark"
	"github.com/nix-hive/nix-hive/state"
)

// Request is what to plan: targets of a hive, the rollout policy (nil
// without one), and how to find the systems' paths.
type Request struct {
	Hive     *eval.Hive
	State    *state.File
	Policy   *starlark.Policy
	Patterns []string
	Paths    eval.PathMode
	// Specialisation, when set, is activated on every target instead of
	// each instance's own (deploy --specialisation).
	Specialisation string
	// Prebuilt, when set, gives the systems' paths (deploy --systems):
	// nothing is evaluated or built, and Paths does not apply.
	Prebuilt *Prebuilt
}

// Prebuilt is systems built elsewhere (by CI): their output paths, read
// from File, and the binary cache they are fetched from ("" when they
// are in this machine's store already).
type Prebuilt struct {
	File string
	// Paths are each system's toplevel and its profiles' packages.
	Paths map[string]eval.Built
	From  string
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
	var builds *eval.Builds
	if r.Prebuilt != nil {
		builds, err = r.Prebuilt.adopt(ctx, r.Hive, r.State, systems)
	} else {
		builds, err = r.Hive.Paths(ctx, r.State, systems, r.Paths)
	}
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
	if err := plan.specialise(inv, r.Specialisation); err != nil {
		return nil, err
	}
	return &Prepared{Hive: r.Hive, Plan: plan, Policy: r.Policy, Waves: waves}, nil
}

// adopt takes the prebuilt paths of systems (eval.Hive.Adopt); a system
// the file has no path for stops the deploy, naming it.
func (pb *Prebuilt) adopt(ctx context.Context, h *eval.Hive, st *state.File, systems []string) (*eval.Builds, error) {
	given := map[string]eval.Built{}
	var missing []string
	for _, s := range systems {
		if p, ok := pb.Paths[s]; ok {
			given[s] = p
		} else {
			missing = append(missing, s)
		}
	}
	if len(missing) > 0 {
		return nil, eval.InHive(fmt.Errorf("%s: no path for system %s, which the targets run", pb.File, strings.Join(missing, ", ")))
	}
	for _, s := range systems {
		if _, err := h.Inventory.BuiltProfiles(s, given[s]); err != nil {
			return nil, eval.InHive(fmt.Errorf("%s: %w: nix-hive build's output names a system's profiles, a map of systems to paths none", pb.File, err))
		}
	}
	return h.Adopt(ctx, st, given, pb.From)
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

// substituting lists the targets that substitute from a store or cache.
func (p *Plan) substituting() []string {
	var out []string
	for _, n := range p.Order {
		if h := p.Hosts[n]; h.Target && (h.Source.Kind == SourceStore || h.Source.Kind == SourceCache || h.Source.Kind == SourceBuilder && h.Source.From != n) {
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
