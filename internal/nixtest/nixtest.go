package nixtest

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/nix-hive/nix-hive/internal/testenv"
)

// Config is the NIX_CONFIG for tests: no binary cache is reachable from the
// lab, and waiting for cache.nixos.org to time out would only slow builds.
const Config = "experimental-features = nix-command flakes\nsubstituters =\nwarn-dirty = false"

// Require skips the test when nix is missing, or fails it when CI is set.
// When NIX_HIVE_TEST_WANT_NIX is set (the suite's second pass, run by
// scripts/test with another Nix first on PATH) it also fails the test if
// the nix on PATH is not that release: a pass that silently ran the
// system's Nix would prove nothing.
func Require(t testing.TB) {
	t.Helper()
	for _, tool := range []string{"nix", "nix-store", "nix-env"} {
		testenv.Tool(t, tool, "apt-get install nix-bin")
	}
	if want := os.Getenv("NIX_HIVE_TEST_WANT_NIX"); want != "" {
		if got := Release(t); !strings.HasSuffix(got, " "+want) {
			t.Fatalf("this pass wants Nix %s, but the nix on PATH is %q", want, got)
		}
	}
	t.Setenv("NIX_CONFIG", Config)
}

var release struct {
	sync.Once
	version string
	err     error
}

// Release is what the nix on PATH says of itself ("nix (Nix) 2.24.15").
func Release(t testing.TB) string {
	t.Helper()
	release.Do(func() {
		out, err := exec.Command("nix", "--version").Output()
		release.version, release.err = strings.TrimSpace(string(out)), err
	})
	if release.err != nil {
		t.Fatalf("nix --version: %v", release.err)
	}
	return release.version
}

// Other is the bin directory of a second Nix release (NIX_HIVE_TEST_NIX),
// for tests of fleets that mix releases; without it the test skips (fails
// under CI, which always builds one).
func Other(t testing.TB) string {
	t.Helper()
	dir := os.Getenv("NIX_HIVE_TEST_NIX")
	if dir == "" {
		testenv.Missing(t, "NIX_HIVE_TEST_NIX is not set: a second Nix release is needed (../shared/nix/build-nix.sh builds one)")
	}
	if _, err := os.Stat(filepath.Join(dir, "nix")); err != nil {
		t.Fatalf("NIX_HIVE_TEST_NIX=%s: %v", dir, err)
	}
	return dir
}
