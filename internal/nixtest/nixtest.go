// Package nixtest prepares tests that run the real nix: it checks that nix
// is installed and gives the environment every such test uses.
package nixtest

import (
	"testing"

	"github.com/nix-hive/nix-hive/internal/testenv"
)

// Config is the NIX_CONFIG for tests: no binary cache is reachable from the
// lab, and waiting for cache.nixos.org to time out would only slow builds.
const Config = "experimental-features = nix-command flakes\nsubstituters =\nwarn-dirty = false"

// Require skips the test when nix is missing, or fails it when CI is set.
func Require(t testing.TB) {
	t.Helper()
	for _, tool := range []string{"nix", "nix-store", "nix-env"} {
		testenv.Tool(t, tool, "apt-get install nix-bin")
	}
	t.Setenv("NIX_CONFIG", Config)
}
