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

// The hive makes the region the racks' store and each rack its consumers'
// store, keeping what lab.nix says about connections.
func TestHiveInstances(t *testing.T) {
	if _, err := exec.LookPath("nix-instantiate"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("CI: nix-instantiate not found in PATH (apt-get install nix-bin)")
		}
		t.Skip("nix-instantiate not found in PATH")
	}
	dir := t.TempDir()
	ts, err := filepath.Abs("../../examples/testsystems")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(ts, filepath.Join(dir, "testsystems")); err != nil {
		t.Fatal(err)
	}
	hive := filepath.Join(dir, "hive")
	if err := os.Mkdir(hive, 0o755); err != nil {
		t.Fatal(err)
	}
	lab := `{ region = { host = "198.18.9.2"; }; rack-1 = { host = "198.18.9.6"; jump = "region"; };
	  node-1-1 = { host = "127.77.9.5"; jump = "rack-1"; }; }`
	for n, content := range map[string]string{"lab.nix": lab, "hive.nix": hiveNix(1), "version.nix": `"fleet-x"`} {
		if err := os.WriteFile(filepath.Join(hive, n), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command("nix-instantiate", "--eval", "--strict", "--json", "-E", `(import ./hive.nix).instances`)
	cmd.Dir = hive
	cmd.Env = harness.Env("")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("nix-instantiate: %v", err)
	}
	var got map[string]map[string]string
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("parse %s: %v", out, err)
	}
	want := map[string]map[string]string{
		"region":   {"host": "198.18.9.2", "system": "region"},
		"rack-1":   {"host": "198.18.9.6", "jump": "region", "system": "rack", "store": "region"},
		"node-1-1": {"host": "127.77.9.5", "jump": "rack-1", "system": "web", "store": "rack-1"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("instances = %v, want %v", got, want)
	}
}
