package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/nix-hive/nix-hive/bench/internal/harness"
)

// evalJSON evaluates expr with nix-instantiate in dir, where
// testsystems links to the checkout's examples/testsystems.
func evalJSON(t *testing.T, dir, expr string, v any) {
	t.Helper()
	cmd := exec.Command("nix-instantiate", "--eval", "--strict", "--json", "-E", expr)
	cmd.Dir = dir
	cmd.Env = harness.Env("")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("nix-instantiate -E %s: %v", expr, err)
	}
	if err := json.Unmarshal(out, v); err != nil {
		t.Fatalf("parse %s: %v", out, err)
	}
}

func needNix(t *testing.T) {
	if _, err := exec.LookPath("nix-instantiate"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("CI: nix-instantiate not found in PATH (apt-get install nix-bin)")
		}
		t.Skip("nix-instantiate not found in PATH")
	}
}

func benchDir(t *testing.T) string {
	dir := t.TempDir()
	ts, err := filepath.Abs("../../examples/testsystems")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(ts, filepath.Join(dir, "testsystems")); err != nil {
		t.Fatal(err)
	}
	return dir
}

// The baselines must be the hive's two systems in a version of their own
// per case: a shared path would let a later case find it on the hosts.
func TestBaselinesAreDistinct(t *testing.T) {
	needNix(t)
	dir := benchDir(t)
	if err := os.WriteFile(filepath.Join(dir, "baselines.nix"), []byte(baselinesNix(1)), 0o644); err != nil {
		t.Fatal(err)
	}
	var got map[string]struct{ Name, Path string }
	evalJSON(t, dir, `builtins.mapAttrs (n: d: { name = d.hiveSystemName; path = d.outPath; }) (import ./baselines.nix)`, &got)
	if len(got) != 6 {
		t.Fatalf("baselines.nix has %d systems, want store and web for a, b, c: %v", len(got), got)
	}
	seen := map[string]string{}
	for _, c := range []string{"a", "b", "c"} {
		for _, n := range []string{"store", "web"} {
			s, ok := got[n+"-"+c]
			if !ok || s.Name != n {
				t.Errorf("%s-%s: %+v, want system %s", n, c, s, n)
			}
			if other, dup := seen[s.Path]; dup {
				t.Errorf("%s-%s and %s share %s", n, c, other, s.Path)
			}
			seen[s.Path] = n + "-" + c
		}
	}
}

// The hive puts store on the jump host and web, substituted from it, on
// every other lab host, keeping what lab.nix says about connections.
func TestHiveInstances(t *testing.T) {
	needNix(t)
	dir := benchDir(t)
	hive := filepath.Join(dir, "hive")
	if err := os.Mkdir(hive, 0o755); err != nil {
		t.Fatal(err)
	}
	lab := `{ portico = { host = "198.18.9.2"; }; int-1 = { host = "127.77.9.3"; jump = "portico"; }; }`
	for n, content := range map[string]string{"lab.nix": lab, "hive.nix": hiveNix(1)} {
		if err := os.WriteFile(filepath.Join(hive, n), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var got map[string]map[string]string
	evalJSON(t, hive, `(import ./hive.nix).instances`, &got)
	want := map[string]map[string]string{
		"portico": {"host": "198.18.9.2", "system": "store"},
		"int-1":   {"host": "127.77.9.3", "jump": "portico", "system": "web", "store": "portico"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("instances = %v, want %v", got, want)
	}
}
