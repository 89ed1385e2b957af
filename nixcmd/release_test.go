package nixcmd_test

import (
	"context"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/nix-hive/nix-hive/internal/nixtest"
	"github.com/nix-hive/nix-hive/nixcmd"
)

const (
	sys = "/nix/store/ydjlnc8xpmqiig8i1c5x8qhkh5d11gbp-nixos-system-t-1"
	bad = "/nix/store/00000000000000000000000000000000-x"
)

// What each release printed for `nix path-info --json --sigs sys bad`
// here (abridged).
var pathInfoOutputs = map[string]string{
	"2.8":  `[{"path":"` + bad + `","valid":false},{"path":"` + sys + `","narHash":"sha256-3Owr","narSize":1944,"references":["` + sys + `"],"deriver":"/nix/store/v4-t.drv","registrationTime":1795706407,"ultimate":true,"signatures":["hive-1:abc"]}]`,
	"2.24": `{"` + bad + `":null,"` + sys + `":{"ca":null,"deriver":"/nix/store/v4-t.drv","narHash":"sha256-3Owr","narSize":1944,"references":["` + sys + `"],"registrationTime":1795706407,"signatures":["hive-1:abc"],"ultimate":true}}`,
}

func TestDecodePathInfoBothShapes(t *testing.T) {
	want := []nixcmd.PathInfo{
		{Path: bad},
		{Path: sys, Valid: true, NarSize: 1944, NarHash: "sha256-3Owr", References: []string{sys}, Deriver: "/nix/store/v4-t.drv", Signatures: []string{"hive-1:abc"}},
	}
	for release, out := range pathInfoOutputs {
		got, err := nixcmd.DecodePathInfo([]byte(out))
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("Nix %s: %+v, %v\nwant %+v", release, got, err, want)
		}
	}
	if _, err := nixcmd.DecodePathInfo([]byte("error: oops")); err == nil {
		t.Error("garbage decoded without an error")
	}
}

func TestSSHConnectFailureBothWordings(t *testing.T) {
	tests := []struct {
		release, stderr, detail string
		ok                      bool
	}{
		{"2.8", "ssh: connect to host 127.0.0.1 port 1: Connection refused\nerror: cannot connect to 'root@127.0.0.1'", "ssh: connect to host 127.0.0.1 port 1: Connection refused", true},
		{"2.24", "ssh: connect to host 127.0.0.1 port 1: Connection refused\nerror: failed to start SSH connection to 'root@127.0.0.1'", "ssh: connect to host 127.0.0.1 port 1: Connection refused", true},
		{"2.24, ssh silent", "warning: something\nerror: failed to start SSH connection to 'app-1'", "", true},
		{"other failure", "error: path '/nix/store/x' is not valid", "", false},
	}
	for _, tt := range tests {
		detail, ok := nixcmd.SSHConnectFailure(tt.stderr)
		if ok != tt.ok || detail != tt.detail {
			t.Errorf("%s: %q, %v; want %q, %v", tt.release, detail, ok, tt.detail, tt.ok)
		}
	}
}

// The same, against the nix on PATH: the suite's second pass runs it with
// another release (scripts/test, NIX_HIVE_TEST_NIX).
func TestReleaseFormsWithThisNix(t *testing.T) {
	nixtest.Require(t)
	ctx := context.Background()
	r := &nixcmd.Runner{}
	out, err := r.Run(ctx, "nix-build", "--no-out-link", "-E", `derivation { name = "nixcmd-path-info"; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "echo hi > $out" ]; }`)
	if err != nil {
		t.Fatal(err)
	}
	path := strings.TrimSpace(string(out))
	t.Logf("%s", nixtest.Release(t))

	infos, err := r.PathInfo(ctx, path, bad)
	if err != nil {
		t.Fatal(err)
	}
	if len(infos) != 2 || infos[0].Path != bad || infos[0].Valid || infos[1].Path != path || !infos[1].Valid || infos[1].NarSize == 0 {
		t.Errorf("path-info of a valid and an invalid path: %+v", infos)
	}

	// A host that refuses the connection: Nix's message, in this
	// release's words, is recognised, with ssh's reason.
	cmd := r.Command(ctx, "nix", "copy", "--to", "ssh://root@127.0.0.1", path)
	cmd.Env = append(cmd.Env, "NIX_SSHOPTS=-p 1 -o BatchMode=yes -o ConnectTimeout=5")
	msg, err := cmd.CombinedOutput()
	if _, ok := err.(*exec.ExitError); !ok {
		t.Fatalf("nix copy to a closed port: %v\n%s", err, msg)
	}
	detail, ok := nixcmd.SSHConnectFailure(string(msg))
	if !ok || !strings.Contains(detail, "Connection refused") {
		t.Errorf("not recognised as a failed connection (%q, %v):\n%s", detail, ok, msg)
	}

	// An unsigned substitute is refused in words SignatureRefused knows.
	cache := "file://" + filepath.Join(t.TempDir(), "cache")
	if _, err := r.Run(ctx, "nix", "copy", "--to", cache, path); err != nil {
		t.Fatal(err)
	}
	store := filepath.Join(t.TempDir(), "store")
	out, err = r.Run(ctx, "nix-store", "--store", store, "--realise", path,
		"--option", "substituters", cache, "--option", "require-sigs", "true", "--option", "trusted-public-keys", "")
	if err == nil {
		t.Fatalf("an unsigned path was substituted: %s", out)
	}
	if !nixcmd.SignatureRefused(err.(*nixcmd.Error).Stderr) {
		t.Errorf("refusal not recognised: %v", err)
	}
	if p, kind := nixcmd.BadSubstitute(err.(*nixcmd.Error).Stderr); p != path || kind != "signature" {
		t.Errorf("BadSubstitute = %q, %q; want %s, signature:\n%v", p, kind, path, err)
	}
}
