package cli

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"

	"github.com/nix-hive/nix-hive/eval"
	"github.com/nix-hive/nix-hive/openssh"
	"github.com/nix-hive/nix-hive/state"
	"github.com/nix-hive/nix-hive/transport"
)

// BuildHost is the flag of the commands that build.
type BuildHost struct {
	BuildHost string `help:"Build the systems on this instance of the hive, with Nix's remote builders (--builders, --max-jobs 0), reached as nix-hive reaches it (address, jump, pinned host key); the outputs come back here, where they are signed and pushed as usual. Default: the hive's nix.build.host." placeholder:"INSTANCE"`
}

// buildOn makes h's builds run on its build host, when it has one
// (--build-host, else nix.build.host): Nix's own remote builders, with
// the hive's OpenSSH config (pool's, pinned keys included, written
// beside hive.state) so that ssh reaches the builder exactly as nix-hive
// does. The builder line names no key and no host key: the config has
// them.
func (b *BuildHost) buildOn(h *eval.Hive, st *state.File, pool *transport.Pool) error {
	inv := h.Inventory
	name := b.BuildHost
	if name == "" {
		name = inv.Build.Host
	}
	if name == "" {
		return nil
	}
	if _, ok := inv.Instances[name]; !ok {
		return fmt.Errorf("build host: %w", inv.NoSuchInstance(name))
	}
	cfg, kh := st.AuxPath("ssh_config"), st.AuxPath("ssh_known_hosts")
	if err := os.MkdirAll(filepath.Dir(cfg), 0o755); err != nil {
		return fmt.Errorf("build host %s: %w", name, err)
	}
	if err := openssh.Write(pool.Hosts(), cfg, kh); err != nil {
		return fmt.Errorf("build host %s: %w", name, err)
	}
	abs, err := filepath.Abs(cfg)
	if err != nil {
		return fmt.Errorf("build host %s: %w", name, err)
	}
	nix := *h.Evaluator.Nix
	nix.Env = append(slices.Clone(nix.Env), "NIX_SSHOPTS=-F "+abs)
	h.Evaluator.Nix = &nix
	line := fmt.Sprintf("ssh-ng://%s %s - 4 1 - - -", transport.Alias(name), strings.Join(platforms(inv), ","))
	inv.Build.Flags = append(slices.Clone(inv.Build.Flags), "--builders", line, "--max-jobs", "0")
	return nil
}

// platforms are the systems' platforms and this machine's, which the
// builder is told it builds.
func platforms(inv *eval.Inventory) []string {
	arch := map[string]string{"amd64": "x86_64", "arm64": "aarch64", "386": "i686"}[runtime.GOARCH]
	out := []string{arch + "-" + runtime.GOOS}
	for _, s := range inv.Systems {
		if s.Platform != "" && !slices.Contains(out, s.Platform) {
			out = append(out, s.Platform)
		}
	}
	slices.Sort(out)
	return out
}
