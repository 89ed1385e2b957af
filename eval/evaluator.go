package eval

import (
	"context"
	"crypto/sha1"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"

	hivelib "github.com/nix-hive/nix-hive/lib"
	"github.com/nix-hive/nix-hive/nixcmd"
)

// Evaluator evaluates and builds one hive.
type Evaluator struct {
	Src Source
	Nix *nixcmd.Runner
	// CacheDir holds the installed copy of the embedded library.
	CacheDir string
	// FlakeAttr is the flake output holding the hive (default "hive").
	FlakeAttr string
	// Warn, if set, receives warnings (one line each, no prefix).
	Warn func(string)
	// BuildStores maps each build host (an instance) to the Nix store URL
	// this machine's nix reaches it at (ssh-ng://ALIAS, NIX_SSHOPTS in
	// Nix's environment): the systems built on one are built in its store
	// and stay there (Built.On).
	BuildStores map[string]string

	offlineOnce sync.Once

	libDir string
}

func (e *Evaluator) flakeAttr() string {
	if e.FlakeAttr != "" {
		return e.FlakeAttr
	}
	return "hive"
}

// installable returns the arguments that name attr (an attribute path
// below the evaluated hive) for nix eval / nix build.
func (e *Evaluator) installable(attr ...string) ([]string, error) {
	path := attrPath(attr)
	if e.Src.Flake {
		return []string{e.Src.Dir + "#" + e.flakeAttr() + "." + path}, nil
	}
	if e.libDir == "" {
		base := e.CacheDir
		if base == "" {
			c, err := os.UserCacheDir()
			if err != nil {
				c = os.TempDir()
			}
			base = filepath.Join(c, "nix-hive")
		}
		if err := os.MkdirAll(base, 0o755); err != nil {
			return nil, fmt.Errorf("cache directory: %w", err)
		}
		dir, err := hivelib.Install(base)
		if err != nil {
			return nil, err
		}
		e.libDir = dir
	}
	return []string{"-f", filepath.Join(e.libDir, "eval.nix"), "--argstr", "hiveFile", e.Src.File, path}, nil
}

// attrPath quotes every component so system names with dots or other
// characters address the right attribute.
func attrPath(parts []string) string {
	q := make([]string, len(parts))
	for i, p := range parts {
		q[i] = strconv.Quote(p)
	}
	return strings.Join(q, ".")
}

// Inventory evaluates the hive's inventory in one nix call. A hive with
// validation errors returns *InvalidHiveError listing all of them.
func (e *Evaluator) Inventory(ctx context.Context) (*Inventory, error) {
	inst, err := e.installable("inventory")
	if err != nil {
		return nil, err
	}
	args := append([]string{"eval", "--json"}, inst...)
	out, err := e.Nix.Quiet().Run(ctx, "nix", args...)
	if err != nil {
		if ctx.Err() == nil {
			err = hiveError{err}
		}
		return nil, fmt.Errorf("evaluate %s: %w", e.Src.File, err)
	}
	inv, err := decodeInventory(out)
	if err != nil {
		return nil, fmt.Errorf("evaluate %s: %w", e.Src.File, err)
	}
	if problems := append(inv.Errors, inv.checkEndpoints()...); len(problems) > 0 {
		return inv, &InvalidHiveError{File: e.Src.File, Problems: problems}
	}
	return inv, nil
}

// Built is the result of building one system.
type Built struct {
	System  string `json:"system"`
	DrvPath string `json:"drvPath"`
	OutPath string `json:"outPath"`
	// Profiles are the out paths of the system's profiles' packages, by
	// profile name, and ProfileDrvs their derivations.
	Profiles    map[string]string `json:"profiles,omitempty"`
	ProfileDrvs map[string]string `json:"-"`
	// On is the build host (an instance) whose store holds the outputs,
	// "" for this machine's.
	On string `json:"on,omitempty"`
}

// Derivations are what building the system builds: its toplevel's
// derivation, then its profiles' (by name).
func (b Built) Derivations() []string {
	out := []string{b.DrvPath}
	for _, n := range slices.Sorted(maps.Keys(b.ProfileDrvs)) {
		out = append(out, b.ProfileDrvs[n])
	}
	return out
}

// Roots are the store paths a build of the system made: its toplevel,
// then its profiles' packages (by name).
func (b Built) Roots() []string {
	out := []string{b.OutPath}
	for _, n := range slices.Sorted(maps.Keys(b.Profiles)) {
		out = append(out, b.Profiles[n])
	}
	return out
}

// Build builds the given systems. Systems that share the same effective
// `paths` are evaluated in one `nix eval` and realised in one
// `nix-store --realise`, so Nix schedules them in parallel and builds a
// derivation shared by two system names once; systems that override
// `paths` differently need their own -I flags and so their own invocation.
//
// Why not `nix build --json`: it deduplicates and reorders its results, so
// they cannot be matched to system names, and the syntax for building a
// .drv changed in Nix 2.15; `nix-store --realise` prints outputs in argument
// order on every Nix version and takes the same build options (--builders,
// --max-jobs, --keep-going).
func (e *Evaluator) Build(ctx context.Context, inv *Inventory, systems []string) (map[string]Built, error) {
	groups, err := groupByPaths(inv, systems)
	if err != nil {
		return nil, err
	}
	result := map[string]Built{}
	for _, group := range groups {
		include := includeFlags(inv.Systems[group[0]].Paths)
		drvs, err := e.instantiate(ctx, include, group)
		if err != nil {
			return result, err
		}
		if on := inv.BuildHostOf(group[0]); on != "" {
			if err := e.buildOn(ctx, on, inv.Build.Flags, group, drvs); err != nil {
				return result, err
			}
			for _, s := range group {
				b := drvs[s]
				b.On = on
				result[s] = b
			}
			continue
		}
		// Outputs already in the store need no realising: a no-op deploy
		// spares the process.
		if !e.allValid(ctx, drvs) {
			e.warnOffline(ctx)
			if err := e.realise(ctx, inv.Build.Flags, group, drvs); err != nil {
				return result, err
			}
		}
		for _, s := range group {
			b := drvs[s]
			if _, err := os.Stat(filepath.Join(b.OutPath, "bin", "switch-to-configuration")); err != nil {
				return result, fmt.Errorf("system %s: %s has no bin/switch-to-configuration; is `toplevel` a NixOS system?", s, b.OutPath)
			}
			for _, n := range slices.Sorted(maps.Keys(b.Profiles)) {
				act := filepath.Join(b.Profiles[n], inv.Systems[s].Profiles[n].Activate)
				if fi, err := os.Stat(act); err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
					return result, hiveError{fmt.Errorf("%s: system %s: profile %s: %s is not a program (its activate names a command inside the package)", e.Src.File, s, n, act)}
				}
			}
			result[s] = b
		}
	}
	return result, nil
}

// buildOn builds group's systems in the store of build host on, where
// the outputs stay: the derivations go there (nix copy --derivation, the
// same in every release), nix-store --realise runs against that store
// (the builder's daemon builds, its log comes back), and each output is
// checked there as Build checks a local one.
func (e *Evaluator) buildOn(ctx context.Context, on string, flags, group []string, drvs map[string]Built) error {
	store := e.BuildStores[on]
	if store == "" {
		return fmt.Errorf("build host %s: no store URL for it", on)
	}
	var outs, ds []string
	for _, s := range group {
		outs = append(outs, drvs[s].Roots()...)
		ds = append(ds, drvs[s].Derivations()...)
	}
	ds = slices.Compact(slices.Sorted(slices.Values(ds)))
	if _, err := e.Nix.Quiet().Run(ctx, "nix-store", append([]string{"--store", store, "--check-validity"}, outs...)...); err == nil {
		return nil // built there before: nothing to send or build
	}
	if _, err := e.Nix.Run(ctx, "nix", append([]string{"copy", "--derivation", "--to", store}, ds...)...); err != nil {
		return fmt.Errorf("build %s on %s: send the derivations: %w", strings.Join(group, ", "), on, err)
	}
	args := append(append([]string{"--store", store, "--realise"}, flags...), ds...)
	if _, err := e.Nix.Run(ctx, "nix-store", args...); err != nil {
		return fmt.Errorf("build %s on %s: %w", strings.Join(group, ", "), on, err)
	}
	for _, s := range group {
		stc := drvs[s].OutPath + "/bin/switch-to-configuration"
		if _, err := e.Nix.Quiet().Run(ctx, "nix", "store", "ls", "--store", store, stc); err != nil {
			return fmt.Errorf("system %s: %s on %s has no bin/switch-to-configuration; is `toplevel` a NixOS system?", s, drvs[s].OutPath, on)
		}
	}
	return nil
}

// realise builds (or substitutes) the derivations of group's systems,
// each once.
func (e *Evaluator) realise(ctx context.Context, flags, group []string, drvs map[string]Built) error {
	args := append([]string{"--realise"}, flags...)
	seen := map[string]bool{}
	for _, s := range group {
		for _, d := range drvs[s].Derivations() {
			if !seen[d] {
				seen[d] = true
				args = append(args, d)
			}
		}
	}
	if _, err := e.Nix.Run(ctx, "nix-store", args...); err != nil {
		return fmt.Errorf("build %s: %w", strings.Join(group, ", "), err)
	}
	return nil
}

// allValid reports whether every output is already in the store (nothing
// to build or substitute).
func (e *Evaluator) allValid(ctx context.Context, drvs map[string]Built) bool {
	args := []string{"--check-validity"}
	for _, b := range drvs {
		if b.OutPath == "" {
			return false
		}
		args = append(args, b.Roots()...)
	}
	_, err := e.Nix.Quiet().Run(ctx, "nix-store", args...)
	return err == nil
}

// instantiate evaluates the toplevels of systems and their profiles'
// packages in one call and returns their derivation and output paths.
func (e *Evaluator) instantiate(ctx context.Context, include []string, systems []string) (map[string]Built, error) {
	inst, err := e.installable("builds")
	if err != nil {
		return nil, err
	}
	names, err := json.Marshal(systems)
	if err != nil {
		return nil, err
	}
	// A profile's path must be a derivation (a package): a plain string
	// would name a path that nothing here builds or signs.
	apply := "bs: builtins.listToAttrs (map (n: { name = n; value = { drv = bs.${n}.toplevel.drvPath; out = bs.${n}.toplevel.outPath; " +
		"profiles = builtins.mapAttrs (_: p: if builtins.isAttrs p && p ? drvPath then { drv = p.drvPath; out = p.outPath; } else { bad = builtins.typeOf p; }) bs.${n}.profiles; }; }) (builtins.fromJSON " + nixcmd.String(string(names)) + "))"
	args := []string{"eval", "--json"}
	args = append(args, include...)
	args = append(args, inst...)
	args = append(args, "--apply", apply)
	// Not drvPath/outPath: an attrset with outPath is turned into that
	// string by toJSON.
	var raw map[string]struct {
		Drv, Out string
		Profiles map[string]struct{ Drv, Out, Bad string }
	}
	if err := e.Nix.JSON(ctx, &raw, "nix", args...); err != nil {
		if ctx.Err() == nil {
			err = hiveError{err}
		}
		return nil, fmt.Errorf("evaluate systems %s: %w", strings.Join(systems, ", "), err)
	}
	out := map[string]Built{}
	for _, s := range systems {
		b, ok := raw[s]
		if !ok || b.Drv == "" || b.Out == "" {
			return nil, fmt.Errorf("evaluate system %s: no derivation (is its toplevel a derivation?)", s)
		}
		built := Built{System: s, DrvPath: b.Drv, OutPath: b.Out}
		for _, n := range slices.Sorted(maps.Keys(b.Profiles)) {
			p := b.Profiles[n]
			if p.Drv == "" || p.Out == "" {
				return nil, hiveError{fmt.Errorf("%s: system %s: profile %s: attribute path: expected a derivation (a package, such as home-manager's activationPackage), got a %s", e.Src.File, s, n, p.Bad)}
			}
			if built.Profiles == nil {
				built.Profiles, built.ProfileDrvs = map[string]string{}, map[string]string{}
			}
			built.Profiles[n], built.ProfileDrvs[n] = p.Out, p.Drv
		}
		out[s] = built
	}
	return out, nil
}

// groupByPaths groups systems that share the same effective `paths` (and
// so the same -I flags), keeping the order systems first appear in.
func groupByPaths(inv *Inventory, systems []string) ([][]string, error) {
	index := map[string]int{}
	var groups [][]string
	for _, s := range systems {
		sys, ok := inv.Systems[s]
		if !ok {
			return nil, fmt.Errorf("unknown system %q", s)
		}
		// Systems built elsewhere are built apart, each host's in one call.
		k := inv.BuildHostOf(s) + "\x00" + pathsKey(sys.Paths)
		i, ok := index[k]
		if !ok {
			i = len(groups)
			index[k] = i
			groups = append(groups, nil)
		}
		groups[i] = append(groups[i], s)
	}
	return groups, nil
}

func pathsKey(p map[string]string) string {
	b, _ := json.Marshal(p) // map keys are sorted by encoding/json
	return string(b)
}

func includeFlags(p map[string]string) []string {
	keys := make([]string, 0, len(p))
	for k := range p {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var args []string
	for _, k := range keys {
		args = append(args, "-I", k+"="+p[k])
	}
	return args
}

// AddRoots registers GC roots in dir for built systems, so a garbage
// collection on the deploy host does not delete what hive.state points at.
func (e *Evaluator) AddRoots(ctx context.Context, dir string, built map[string]Built) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("gc roots: %w", err)
	}
	for s, b := range built {
		if b.On != "" {
			continue // in the build host's store, not this machine's
		}
		roots := map[string]string{filepath.Join(dir, s): b.OutPath}
		// System names hold no "/", so profiles/SYSTEM is the system's own.
		for n, p := range b.Profiles {
			roots[filepath.Join(dir, "profiles", s, n)] = p
		}
		for link, out := range roots {
			if rootIsSet(link, out) {
				continue // nix-store would only write the same links again
			}
			if err := os.MkdirAll(filepath.Dir(link), 0o755); err != nil {
				return fmt.Errorf("gc roots: %w", err)
			}
			if _, err := e.Nix.Run(ctx, "nix-store", "--realise", "--add-root", link, "--indirect", out); err != nil {
				return fmt.Errorf("gc root for %s: %w", s, err)
			}
		}
	}
	return nil
}

// rootIsSet reports whether link is already an indirect GC root of out,
// as nix-store --add-root --indirect leaves one: link points to out, and
// the store's gcroots/auto holds a link to link, named by the nix32
// SHA-1 of its absolute path.
func rootIsSet(link, out string) bool {
	if t, err := os.Readlink(link); err != nil || t != out {
		return false
	}
	abs, err := filepath.Abs(link)
	if err != nil {
		return false
	}
	sum := sha1.Sum([]byte(abs))
	auto := filepath.Join(stateDir(), "gcroots", "auto", nixcmd.Nix32(sum[:]))
	t, err := os.Readlink(auto)
	return err == nil && t == abs
}

// stateDir is Nix's state directory, as Nix finds it.
func stateDir() string {
	if d := os.Getenv("NIX_STATE_DIR"); d != "" {
		return d
	}
	return "/nix/var/nix"
}

// Sign signs the closures of paths with the secret key in keyFile.
func (e *Evaluator) Sign(ctx context.Context, keyFile string, paths []string) error {
	return e.SignOn(ctx, "", keyFile, paths)
}

// SignOn signs the closures of paths in build host on's store ("" this
// machine's). The key stays here: a signature covers a path's hash,
// size and references, which the builder's daemon tells, and it is
// added there (which needs a login its daemon trusts).
func (e *Evaluator) SignOn(ctx context.Context, on, keyFile string, paths []string) error {
	if len(paths) == 0 {
		return nil
	}
	args := []string{"store", "sign", "--recursive", "--key-file", keyFile}
	if on != "" {
		args = append(args, "--store", e.BuildStores[on])
	}
	args = append(args, paths...)
	if _, err := e.Nix.Run(ctx, "nix", args...); err != nil {
		return fmt.Errorf("sign %d closure(s) with %s: %w", len(paths), keyFile, err)
	}
	return nil
}

// Valid reports whether paths are all valid paths in the local store.
func (e *Evaluator) Valid(ctx context.Context, paths ...string) bool {
	return e.ValidOn(ctx, "", paths...)
}

// ValidOn is Valid in build host on's store ("" this machine's); false
// for a build host this run does not reach.
func (e *Evaluator) ValidOn(ctx context.Context, on string, paths ...string) bool {
	if len(paths) == 0 || slices.Contains(paths, "") {
		return false
	}
	args := []string{"--check-validity"}
	if on != "" {
		if e.BuildStores[on] == "" {
			return false
		}
		args = append(args, "--store", e.BuildStores[on])
	}
	_, err := e.Nix.Quiet().Run(ctx, "nix-store", append(args, paths...)...)
	return err == nil
}

// KeyTexts evaluates the values of the text keys of instances: instance
// -> key name -> value. Nothing is written: no derivation, no eval cache
// (--no-eval-cache), and nix's output is read from a pipe. The values are
// secrets; callers must keep them out of logs and errors.
func (e *Evaluator) KeyTexts(ctx context.Context, instances []string) (map[string]map[string]string, error) {
	inst, err := e.installable("keyTexts")
	if err != nil {
		return nil, err
	}
	names, err := json.Marshal(instances)
	if err != nil {
		return nil, err
	}
	apply := "ts: builtins.listToAttrs (map (n: { name = n; value = ts.${n} or { }; }) (builtins.fromJSON " + nixcmd.String(string(names)) + "))"
	args := append([]string{"eval", "--json", "--no-eval-cache"}, inst...)
	args = append(args, "--apply", apply)
	out := map[string]map[string]string{}
	if err := e.Nix.Quiet().JSON(ctx, &out, "nix", args...); err != nil {
		return nil, fmt.Errorf("evaluate the text keys of %s: %w", e.Src.File, err)
	}
	return out, nil
}
