// Package nixtest prepares tests that run the real nix: it checks that nix
// is installed and gives the environment every such test uses.
package nixtest

import (
	"os"
	"os/exec"
	"testing"
)

// Config is the NIX_CONFIG for tests: no binary cache is reachable from the
// lab, and waiting for cache.nixos.org to time out would only slow builds.
const Config = "experimental-features = nix-command flakes\nsubstituters =\nwarn-dirty = false"

// Require skips the test when nix is missing, or fails it when CI is set:
// CI must never pass by skipping the tests that matter.
func Require(t testing.TB) {
	t.Helper()
	for _, tool := range []string{"nix", "nix-store", "nix-env"} {
		if _, err := exec.LookPath(tool); err != nil {
			missing(t, tool+" not found in PATH (apt-get install nix-bin)")
		}
	}
	t.Setenv("NIX_CONFIG", Config)
}

func missing(t testing.TB, what string) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatalf("CI: cannot run: %s", what)
	}
	t.Skipf("skipping: %s", what)
}
