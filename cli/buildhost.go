package cli

import (
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"

	"github.com/nix-hive/nix-hive/eval"
	"github.com/nix-hive/nix-hive/openssh"
	"github.com/nix-hive/nix-hive/state"
	"github.com/nix-hive/nix-hive/transport"
)

// BuildHost is the flag of the commands that build.
type BuildHost struct {
	BuildHost string `help:"Build every system on this instance of the hive, reached as nix-hive reaches it (address, jump, pinned host key): the derivations go there, its Nix daemon builds them, and the outputs stay there, signed there with the hive's key from here; the stores substitute them from it (or, when one cannot, they come through this machine). Default: each system's build.host, else the hive's nix.build.host." placeholder:"INSTANCE"`
}

// buildOn has h's systems built on their build hosts (--build-host for
// all, else each system's build.host, else nix.build.host), in their
// stores: the evaluator reaches each as the store ssh-ng://ALIAS, with
// the hive's OpenSSH config (pool's, pinned keys included, written beside
// hive.state) in NIX_SSHOPTS, so that nix reaches the builder exactly as
// nix-hive does.
func (b *BuildHost) buildOn(h *eval.Hive, st *state.File, pool *transport.Pool) error {
	inv := h.Inventory
	if b.BuildHost != "" {
		if _, ok := inv.Instances[b.BuildHost]; !ok {
			return fmt.Errorf("--build-host: %w", inv.NoSuchInstance(b.BuildHost))
		}
		inv.Build.Host = b.BuildHost
		for _, s := range inv.Systems {
			s.BuildHost = ""
		}
	}
	hosts := map[string]bool{}
	for s := range inv.Systems {
		if on := inv.BuildHostOf(s); on != "" {
			hosts[on] = true
		}
	}
	if len(hosts) == 0 {
		return nil
	}
	cfg, kh := st.AuxPath("ssh_config"), st.AuxPath("ssh_known_hosts")
	if err := os.MkdirAll(filepath.Dir(cfg), 0o755); err != nil {
		return fmt.Errorf("build hosts: %w", err)
	}
	if err := openssh.Write(pool.Hosts(), cfg, kh); err != nil {
		return fmt.Errorf("build hosts: %w", err)
	}
	abs, err := filepath.Abs(cfg)
	if err != nil {
		return fmt.Errorf("build hosts: %w", err)
	}
	nix := *h.Evaluator.Nix
	nix.Env = append(slices.Clone(nix.Env), "NIX_SSHOPTS=-F "+abs)
	h.Evaluator.Nix = &nix
	h.Evaluator.BuildStores = map[string]string{}
	for on := range hosts {
		h.Evaluator.BuildStores[on] = "ssh-ng://" + transport.Alias(on)
	}
	return nil
}

// buildOnOwnPool is buildOn for commands that hold no pool (build, plan
// --build): one is made with cfg only when some system builds elsewhere,
// for the OpenSSH config it writes, and closed at once (nix reaches the
// builders with OpenSSH, not through it).
func (b *BuildHost) buildOnOwnPool(g *Globals, h *eval.Hive, st *state.File, cfg transport.Config) error {
	inv := h.Inventory
	if b.BuildHost == "" && !slices.ContainsFunc(slices.Collect(maps.Keys(inv.Systems)), func(s string) bool { return inv.BuildHostOf(s) != "" }) {
		return nil
	}
	pool, err := newPool(g, h, cfg)
	if err != nil {
		return err
	}
	defer pool.Close()
	return b.buildOn(h, st, pool)
}
