package eval

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/nix-hive/nix-hive/nixcmd"
	"github.com/nix-hive/nix-hive/state"
)

// Adopt takes the output paths of systems from outside, built by CI
// (deploy --systems), instead of evaluating and building them: from, a
// binary cache URL ("" for none), is where the deploy host fetches those
// it lacks. Every closure must carry a signature by the hive's key, which
// is checked here, on the deploy host, before any host is touched; the
// consumers check it again when they substitute. Adopted systems get GC
// roots and hive.state records, as built ones do, so that `--no build`
// and `plan` know them afterwards.
func (h *Hive) Adopt(ctx context.Context, st *state.File, paths map[string]Built, from string) (*Builds, error) {
	pub, err := h.PublicKey()
	if err != nil {
		return nil, err
	}
	if pub == "" {
		return nil, InHive(fmt.Errorf("%s: a system built elsewhere is deployed only with the hive's signature on it, and the hive names no signing key (signing.publicKey, or signing.keyFile with its .pub beside it)", h.Src.File))
	}
	systems := slices.Sorted(maps.Keys(paths))
	var list []string
	for _, s := range systems {
		list = append(list, paths[s].Roots()...)
	}
	if from != "" {
		if err := h.Evaluator.Fetch(ctx, from, pub, list); err != nil {
			return nil, err
		}
	}
	// One check for all; path by path only to name what is missing.
	var missing []string
	if !h.Evaluator.Valid(ctx, list...) {
		for _, s := range systems {
			for _, p := range paths[s].Roots() {
				if !h.Evaluator.Valid(ctx, p) {
					missing = append(missing, fmt.Sprintf("%s (%s)", p, s))
				}
			}
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("not in this machine's Nix store: %s; --from URL fetches them from the binary cache CI copied them to", strings.Join(missing, ", "))
	}
	if err := h.Evaluator.Verify(ctx, pub, list); err != nil {
		return nil, err
	}
	res := &Builds{Paths: map[string]Built{}, Built: map[string]bool{}}
	now := time.Now().UTC()
	for _, s := range systems {
		res.Paths[s] = Built{System: s, OutPath: paths[s].OutPath, Profiles: paths[s].Profiles}
		st.SetSystem(s, state.System{OutPath: paths[s].OutPath, Profiles: paths[s].Profiles, BuiltAt: now})
	}
	if err := st.Save(); err != nil {
		return nil, err
	}
	return res, h.Evaluator.AddRoots(ctx, st.AuxPath("gcroots"), res.Paths)
}

// Fetch copies the closures of paths from the binary cache at url into
// the local store, each signed by key or refused.
func (e *Evaluator) Fetch(ctx context.Context, url, key string, paths []string) error {
	args := append([]string{"copy", "--from", url, "--option", "require-sigs", "true", "--option", "trusted-public-keys", key}, paths...)
	if _, err := e.Nix.Run(ctx, "nix", args...); err != nil {
		return fmt.Errorf("fetch %s from %s: %w", strings.Join(paths, ", "), url, err)
	}
	return nil
}

// untrusted is what `nix store verify` says of a path without a valid
// signature by a trusted key.
var untrusted = regexp.MustCompile(`path '(/nix/store/[^']+)' is untrusted`)

// Verify checks that every path of the closures of paths carries a
// valid signature by key, naming those that do not.
func (e *Evaluator) Verify(ctx context.Context, key string, paths []string) error {
	args := append([]string{"store", "verify", "--recursive", "--no-contents", "--sigs-needed", "1", "--option", "trusted-public-keys", key}, paths...)
	_, err := e.Nix.Quiet().Run(ctx, "nix", args...)
	if err == nil {
		return nil
	}
	var ne *nixcmd.Error
	if errors.As(err, &ne) {
		var bad []string
		for _, m := range untrusted.FindAllStringSubmatch(ne.Stderr, -1) {
			bad = append(bad, m[1])
		}
		if len(bad) > 0 {
			return InHive(fmt.Errorf("not signed by the hive's key %s: %s; refusing to deploy them (sign them with `nix store sign -r -k KEYFILE` where they were built)", keyName(key), strings.Join(bad, ", ")))
		}
	}
	return fmt.Errorf("check the hive's signature on %s: %w", strings.Join(paths, ", "), err)
}

// keyName is the name part of a public key ("hive-1" of "hive-1:base64").
func keyName(key string) string {
	name, _, _ := strings.Cut(key, ":")
	return name
}
