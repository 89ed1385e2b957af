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

func TestSSHCounts(t *testing.T) {
	tests := []struct {
		name, log           string
		wantConns, wantSess int
		wantErr             bool
	}{
		{"own line", "INSTANCE\nssh: 23 connections (1 direct, 22 through jump hosts or ProxyCommand), 23 sessions\n", 23, 23, false},
		{"inside a table row", "node-1-9   web     ssh: 23 connections (1 direct, 22 through jump hosts or ProxyCommand), 24 sessions\n1    /nix/store/x  ok\n", 23, 24, false},
		{"the last one counts", "ssh: 1 connections (1 direct, 0 through jump hosts or ProxyCommand), 1 sessions\nssh: 5 connections (1 direct, 4 through jump hosts or ProxyCommand), 9 sessions\n", 5, 9, false},
		{"none", "INSTANCE\n", 0, 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := filepath.Join(t.TempDir(), "log")
			if err := os.WriteFile(f, []byte(tt.log), 0o644); err != nil {
				t.Fatal(err)
			}
			c, s, err := sshCounts(f)
			if (err != nil) != tt.wantErr || c != tt.wantConns || s != tt.wantSess {
				t.Errorf("sshCounts = %d, %d, %v; want %d, %d, error %v", c, s, err, tt.wantConns, tt.wantSess, tt.wantErr)
			}
		})
	}
}
