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
		name, log string
		want      sshLine
		wantErr   bool
	}{
		{"own line", "INSTANCE\nssh: 23 connections (1 direct, 22 through jump hosts or ProxyCommand), 23 sessions\n",
			sshLine{conns: 23, sessions: 23, keepalives: -1}, false},
		{"inside a table row", "node-1-9   web     ssh: 23 connections (1 direct, 22 through jump hosts or ProxyCommand), 24 sessions\n1    /nix/store/x  ok\n",
			sshLine{conns: 23, sessions: 24, keepalives: -1}, false},
		{"the last one counts", "ssh: 1 connections (1 direct, 0 through jump hosts or ProxyCommand), 1 sessions\nssh: 5 connections (1 direct, 4 through jump hosts or ProxyCommand), 9 sessions\n",
			sshLine{conns: 5, sessions: 9, keepalives: -1}, false},
		{"with the split", "ssh: 90 connections (2 direct, 88 through jump hosts or ProxyCommand), 180 sessions (178 exec, 2 sftp), 31 sftp requests, at most 2 connections to one host\n",
			sshLine{conns: 90, sessions: 180, split: true, exec: 178, sftp: 2, sftpRequests: 31, maxConns: 2, keepalives: -1}, false},
		{"with keepalives", "ssh: 90 connections (2 direct, 88 through jump hosts or ProxyCommand), 180 sessions (178 exec, 2 sftp), 31 sftp requests, at most 2 connections to one host, 7 keepalives\n",
			sshLine{conns: 90, sessions: 180, split: true, exec: 178, sftp: 2, sftpRequests: 31, maxConns: 2, keepalives: 7}, false},
		{"none", "INSTANCE\n", sshLine{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := filepath.Join(t.TempDir(), "log")
			if err := os.WriteFile(f, []byte(tt.log), 0o644); err != nil {
				t.Fatal(err)
			}
			got, err := sshCounts(f)
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Errorf("sshCounts = %+v, %v; want %+v, error %v", got, err, tt.want, tt.wantErr)
			}
		})
	}
}

func TestMuxCounts(t *testing.T) {
	tests := []struct {
		name, log string
		want      sshLine
		wantErr   bool
	}{
		{"before the split", "ssh: through mux pid 77: 0 new connections, 0 sessions, 45 hosts' state read\n",
			sshLine{keepalives: -1}, false},
		{"with the split", "ssh: through mux pid 77: 1 new connections, 2 sessions, 45 hosts' state read (sessions: 2 exec, 0 sftp; sftp requests: 0 of this command's, 270 of the holder's)\n",
			sshLine{conns: 1, sessions: 2, split: true, exec: 2, holderSFTPRequests: 270, keepalives: -1}, false},
		{"not through the holder", "ssh: 1 connections (1 direct, 0 through jump hosts or ProxyCommand), 1 sessions\n", sshLine{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := filepath.Join(t.TempDir(), "log")
			if err := os.WriteFile(f, []byte(tt.log), 0o644); err != nil {
				t.Fatal(err)
			}
			got, err := muxCounts(f)
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Errorf("muxCounts = %+v, %v; want %+v, error %v", got, err, tt.want, tt.wantErr)
			}
		})
	}
}
