package cli

import (
	"context"
	"encoding/json"

	"github.com/nix-hive/nix-hive/eval"
	"github.com/nix-hive/nix-hive/state"
	"github.com/nix-hive/nix-hive/transport"
)

// BuildCmd is `nix-hive build`.
type BuildCmd struct {
	Steps
	BuildHost
	Targets []string `arg:"" optional:"" help:"Instance name globs, or @tag globs (default: all)."`
}

func (c *BuildCmd) Help() string {
	return `Builds every unique system of the selected instances once (one
nix-store --realise), signs the closures when signing.keyFile is set,
records the result in hive.state and prints the inventory as JSON on stdout
(logs go to stderr).

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
	DrvPath string `json:"drvPath,omitempty"`
	OutPath string `json:"outPath,omitempty"`
	// BuiltProfiles are the out paths of the system's profiles, by name
	// (what deploy --systems reads back beside OutPath).
	BuiltProfiles map[string]string `json:"profilePaths,omitempty"`
	// BuiltOn is the build host whose store holds the outputs ("" this
	// machine's).
	BuiltOn   string   `json:"builtOn,omitempty"`
	Built     bool     `json:"built"`
	Cached    bool     `json:"cached,omitempty"`
	Instances []string `json:"instances"`
}

func (c *BuildCmd) Run(ctx context.Context, g *Globals, h *eval.Hive, st *state.File) error {
	inv := h.Inventory
	targets, err := inv.Select(c.Targets)
	if err != nil {
		return err
	}
	mode := c.paths(eval.Build)
	f := Fleet{ConnectTimeout: transport.DefaultConnectTimeout}
	if err := c.buildOnOwnPool(g, h, st, f.transportConfig(h, st)); err != nil {
		return err
	}
	builds, err := h.Paths(ctx, st, inv.SystemsOf(targets), mode)
	if err != nil {
		return err
	}
	out := buildOutput{Targets: targets, Instances: map[string]*eval.Instance{}, Systems: map[string]systemOutput{}, Signing: inv.Signing}
	if out.Signing.PublicKey, err = h.PublicKey(); err != nil {
		return err
	}
	for _, t := range targets {
		in := inv.Instances[t]
		out.Instances[t] = in
		so, ok := out.Systems[in.System]
		if !ok {
			so = systemOutput{System: inv.Systems[in.System]}
			if b, ok := builds.Paths[in.System]; ok {
				so.DrvPath, so.OutPath, so.BuiltProfiles, so.BuiltOn = b.DrvPath, b.OutPath, b.Profiles, b.On
				so.Built = builds.Built[in.System]
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
