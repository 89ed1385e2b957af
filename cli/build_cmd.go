package cli

import (
	"context"
	"encoding/json"
	"time"

	"github.com/nix-hive/nix-hive/eval"
	"github.com/nix-hive/nix-hive/state"
)

// BuildCmd is `nix-hive build`.
type BuildCmd struct {
	Targets []string `arg:"" optional:"" help:"Instance name globs, or @tag globs (default: all)."`
}

func (c *BuildCmd) Help() string {
	return `Builds every unique system of the selected instances once (one
nix-store --realise),
signs the closures when signing.keyFile is set, records the result in
hive.state and prints the inventory as JSON on stdout (logs go to stderr).

With --no build nothing is realised: systems whose last build in hive.state
is still valid in the store are reported from there, the others without paths.`
}

// buildOutput is what `build` prints.
type buildOutput struct {
	Targets   []string                  `json:"targets"`
	Instances map[string]*eval.Instance `json:"instances"`
	Systems   map[string]systemOutput   `json:"systems"`
	Signing   eval.Signing              `json:"signing"`
}

type systemOutput struct {
	*eval.System
	DrvPath   string   `json:"drvPath,omitempty"`
	OutPath   string   `json:"outPath,omitempty"`
	Built     bool     `json:"built"`
	Cached    bool     `json:"cached,omitempty"`
	Instances []string `json:"instances"`
}

func (c *BuildCmd) Run(ctx context.Context, g *Globals) error {
	inv, targets, err := g.targets(ctx, c.Targets)
	if err != nil {
		return err
	}
	res, err := g.buildSystems(ctx, inv, inv.SystemsOf(targets))
	if err != nil {
		return err
	}
	out := buildOutput{Targets: targets, Instances: map[string]*eval.Instance{}, Systems: map[string]systemOutput{}, Signing: inv.Signing}
	if pub, err := g.publicKey(inv); err == nil {
		out.Signing.PublicKey = pub
	}
	for _, t := range targets {
		in := inv.Instances[t]
		out.Instances[t] = in
		so, ok := out.Systems[in.System]
		if !ok {
			so = systemOutput{System: inv.Systems[in.System]}
			if b, ok := res.Paths[in.System]; ok {
				so.DrvPath, so.OutPath = b.DrvPath, b.OutPath
				so.Built = res.Built[in.System]
				so.Cached = !so.Built
			}
		}
		so.Instances = append(so.Instances, t)
		out.Systems[in.System] = so
	}
	enc := json.NewEncoder(g.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(out)
}

// buildResult is what the build step produced or reused.
type buildResult struct {
	Paths map[string]eval.Built // every system with a known, valid path
	Built map[string]bool       // systems realised by this run
}

// buildSystems runs the build step for systems: build (unless --no build),
// keep GC roots, sign, and record the builds in hive.state, which is saved
// even when a later step of the command fails.
func (g *Globals) buildSystems(ctx context.Context, inv *eval.Inventory, systems []string) (*buildResult, error) {
	ev, err := g.evaluator()
	if err != nil {
		return nil, err
	}
	st, err := g.state()
	if err != nil {
		return nil, err
	}
	res := &buildResult{Paths: map[string]eval.Built{}, Built: map[string]bool{}}
	if g.skip("build") {
		for _, s := range systems {
			if prev, ok := st.System(s); ok && ev.Valid(ctx, prev.OutPath) {
				res.Paths[s] = eval.Built{System: s, DrvPath: prev.DrvPath, OutPath: prev.OutPath}
			}
		}
		return res, nil
	}
	keyFile, err := g.keyFile(inv)
	if err != nil {
		return nil, err
	}
	built, err := ev.Build(ctx, inv, systems)
	now := time.Now().UTC()
	for s, b := range built {
		st.SetSystem(s, state.System{DrvPath: b.DrvPath, OutPath: b.OutPath, BuiltAt: now})
		res.Paths[s] = b
		res.Built[s] = true
	}
	if len(built) > 0 {
		if serr := st.Save(); serr != nil && err == nil {
			err = serr
		}
	}
	if err != nil {
		return res, err
	}
	dir, err := g.gcRootDir()
	if err != nil {
		return res, err
	}
	if err := ev.AddRoots(ctx, dir, built); err != nil {
		return res, err
	}
	if keyFile != "" {
		var paths []string
		for _, s := range systems {
			paths = append(paths, built[s].OutPath)
		}
		if err := ev.Sign(ctx, keyFile, paths); err != nil {
			return res, err
		}
	}
	return res, nil
}
