package main

import (
	"encoding/json"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/nix-hive/nix-hive/bench/internal/harness"
)

func TestShareSpreadsCommands(t *testing.T) {
	tests := []struct {
		keys  int
		share float64
		want  []int // the command keys
	}{
		{20, 0.1, []int{10, 20}},
		{10, 0, nil},
		{4, 1, []int{1, 2, 3, 4}},
		{8, 0.25, []int{4, 8}},
		{7, 0.5, []int{2, 4, 6}},
	}
	for _, tt := range tests {
		s, err := newShape(tt.keys, tt.share)
		if err != nil {
			t.Fatal(err)
		}
		var got []int
		for i := 1; i <= tt.keys; i++ {
			if s.command(i) {
				got = append(got, i)
			}
		}
		if !reflect.DeepEqual(got, tt.want) {
			t.Errorf("%d keys, share %v: commands %v, want %v", tt.keys, tt.share, got, tt.want)
		}
	}
	if s, _ := newShape(200, 0.1); s.count(func(k keySpec) bool { return k.Argv != nil }) != 20 {
		t.Error("200 keys at 0.1: not 20 commands")
	}
	for _, bad := range []float64{-0.1, 1.5} {
		if _, err := newShape(10, bad); err == nil {
			t.Errorf("share %v accepted", bad)
		}
	}
}

// The hive declares, for every instance, the keys the benchmark checks
// on its host: what specs says is what hiveNix writes.
func TestHiveKeysAreSpecs(t *testing.T) {
	if _, err := exec.LookPath("nix-instantiate"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("CI: nix-instantiate not found in PATH (apt-get install nix-bin)")
		}
		t.Skip("nix-instantiate not found in PATH")
	}
	s, err := newShape(41, 0.1)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	lab := `{ host-1 = { host = "127.77.9.2"; }; host-2 = { host = "127.77.9.3"; }; }`
	for n, content := range map[string]string{"lab.nix": lab, "hive.nix": hiveNix(s)} {
		if err := os.WriteFile(filepath.Join(dir, n), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command("nix-instantiate", "--eval", "--strict", "--json", "-E",
		`builtins.mapAttrs (n: i: { inherit (i) host system keys; }) (import ./hive.nix).instances`)
	cmd.Dir = dir
	cmd.Env = harness.Env("")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("nix-instantiate: %v", err)
	}
	type instance struct {
		Host, System string
		Keys         map[string]map[string]any
	}
	var got map[string]instance
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("parse %s: %v", out, err)
	}
	want := map[string]instance{}
	for _, h := range []string{"host-1", "host-2"} {
		in := instance{Host: map[string]string{"host-1": "127.77.9.2", "host-2": "127.77.9.3"}[h], System: "idle", Keys: map[string]map[string]any{}}
		for _, k := range s.specs(h) {
			a := map[string]any{}
			if k.Argv != nil {
				a["command"] = []any{k.Argv[0], k.Argv[1], k.Argv[2]}
			} else {
				a["text"] = k.Value
			}
			if k.Post {
				a["upload"] = "post-activation"
			}
			if k.Readers {
				a["user"], a["group"], a["mode"] = "nobody", "nogroup", "0440"
			}
			if k.Dest != path.Join(keysDir, k.Name) {
				a["dest"] = k.Dest
			}
			in.Keys[k.Name] = a
		}
		want[h] = in
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("instances:\n%v\nwant\n%v", got, want)
	}
}

// Key directories are 0751 where they lead to a key others may read,
// else 0750, as nix-hive makes them.
func TestDirs(t *testing.T) {
	tests := []struct {
		keys int
		want map[string]fs.FileMode
	}{
		{200, map[string]fs.FileMode{keysDir: 0o751, svcDir: 0o751}},
		{6, map[string]fs.FileMode{keysDir: 0o751, svcDir: 0o750}},
		{3, map[string]fs.FileMode{keysDir: 0o750}},
	}
	for _, tt := range tests {
		s, err := newShape(tt.keys, 0.1)
		if err != nil {
			t.Fatal(err)
		}
		if got := s.dirs(); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("%d keys: dirs %v, want %v", tt.keys, got, tt.want)
		}
	}
}
