package eval

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nix-hive/nix-hive/internal/nixtest"
	"github.com/nix-hive/nix-hive/nixcmd"
)

// AddRoots skips a root that nix-store already made, and makes it again
// when its registration in gcroots/auto is gone: rootIsSet must name the
// auto link exactly as Nix does (nix32 of the SHA-1 of the link's path).
func TestAddRootsSkipsOnlyRootsInPlace(t *testing.T) {
	nixtest.Require(t)
	ctx := context.Background()
	f := filepath.Join(t.TempDir(), "payload")
	if err := os.WriteFile(f, []byte(t.Name()), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("nix-store", "--add", f).Output()
	if err != nil {
		t.Fatal(err)
	}
	path := strings.TrimSpace(string(out))
	e := &Evaluator{Nix: &nixcmd.Runner{}}
	dir := t.TempDir()
	link := filepath.Join(dir, "sys")
	built := map[string]Built{"sys": {System: "sys", OutPath: path}}
	if rootIsSet(link, path) {
		t.Fatal("a root is set before AddRoots")
	}
	if err := e.AddRoots(ctx, dir, built); err != nil {
		t.Fatal(err)
	}
	if !rootIsSet(link, path) {
		t.Fatal("rootIsSet does not see the root nix-store made: its auto link is named otherwise")
	}
	abs, _ := filepath.Abs(link)
	autos, _ := filepath.Glob(filepath.Join(stateDir(), "gcroots", "auto", "*"))
	var auto string
	for _, a := range autos {
		if t, _ := os.Readlink(a); t == abs {
			auto = a
		}
	}
	if auto == "" {
		t.Fatal("no auto root points to the link")
	}
	if err := os.Remove(auto); err != nil {
		t.Fatal(err)
	}
	if rootIsSet(link, path) {
		t.Fatal("rootIsSet without the auto link")
	}
	if err := e.AddRoots(ctx, dir, built); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.Readlink(auto); got != abs {
		t.Errorf("AddRoots did not register the root again: %s -> %q", auto, got)
	}
	os.Remove(auto)
}
