package nixtest

import (
	"embed"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/nix-hive/nix-hive/internal/testenv"
)

// nixos holds the NixOS stand-in: an eval-config.nix on the real module
// system, declarations of the NixOS options tests touch, and a toplevel.
//
//go:embed nixos/*.nix
var nixos embed.FS

// repoRoot is the checkout this package was compiled from.
func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// NixpkgsLib unpacks nixpkgs' lib ($NIX_HIVE_NIXPKGS_LIB, else
// ../shared/nix/nixpkgs-lib.tar.gz beside the checkout) and returns the
// directory holding lib/. Without it the test skips (fails under CI).
func NixpkgsLib(t testing.TB) string {
	t.Helper()
	tarball := os.Getenv("NIX_HIVE_NIXPKGS_LIB")
	if tarball == "" {
		tarball = filepath.Join(repoRoot(), "..", "shared", "nix", "nixpkgs-lib.tar.gz")
	}
	if _, err := os.Stat(tarball); err != nil {
		testenv.Missing(t, "nixpkgs' lib: "+err.Error()+" (set NIX_HIVE_NIXPKGS_LIB to nixpkgs-lib.tar.gz)")
	}
	dir := t.TempDir()
	if out, err := exec.Command("tar", "-xzf", tarball, "-C", dir).CombinedOutput(); err != nil {
		t.Fatalf("unpack %s: %v\n%s", tarball, err, out)
	}
	return filepath.Join(dir, "nixpkgs-lib")
}

// Nixpkgs assembles a stand-in for nixpkgs that lib/hive.nix can build
// modules and configuration systems with: nixpkgs' real lib, and
// nixos/lib/eval-config.nix running lib.evalModules over declarations of
// the NixOS options nix-hive's module sets (typed as NixOS types them).
// Its toplevel is a test system (examples/testsystems) whose etc/ holds
// nix.conf rendered from nix.settings, sshd's extra configuration and the
// systemd units declared, so a lab host switched to it shows what the
// module system decided. A system's testSystem option passes arguments
// (version, sshd ...) to the test system.
func Nixpkgs(t testing.TB) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "nixpkgs")
	files := map[string]string{
		"nixos/eval-config.nix": "nixos/lib/eval-config.nix",
		"nixos/options.nix":     "nixos/modules/options.nix",
		"nixos/toplevel.nix":    "nixos/modules/toplevel.nix",
	}
	for from, to := range files {
		data, err := nixos.ReadFile(from)
		if err != nil {
			t.Fatal(err)
		}
		write(t, filepath.Join(dir, to), data)
	}
	ts, err := os.ReadFile(filepath.Join(repoRoot(), "examples", "testsystems", "default.nix"))
	if err != nil {
		t.Fatalf("test systems: %v", err)
	}
	write(t, filepath.Join(dir, "nixos", "testsystems.nix"), ts)
	if err := os.Rename(filepath.Join(NixpkgsLib(t), "lib"), filepath.Join(dir, "lib")); err != nil {
		t.Fatal(err)
	}
	return dir
}

func write(t testing.TB, path string, data []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}
