package main

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/nix-hive/nix-hive/internal/nixtest"
	"github.com/nix-hive/nix-hive/nixcmd"
)

// The flake's vendorHash must match go.sum, or `nix build` of the package
// fails for every user. This recomputes it the way buildGoModule does: the
// NAR hash of `go mod vendor`'s output.
func TestFlakeVendorHash(t *testing.T) {
	nixtest.Require(t)
	flake, err := os.ReadFile("../../flake.nix")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`vendorHash = "([^"]+)";`).FindSubmatch(flake)
	if m == nil {
		t.Fatal("flake.nix has no vendorHash")
	}
	vendor := filepath.Join(t.TempDir(), "vendor")
	cmd := exec.Command("go", "mod", "vendor", "-o", vendor)
	cmd.Dir = "../.."
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go mod vendor: %v\n%s", err, out)
	}
	r := &nixcmd.Runner{}
	out, err := r.Run(context.Background(), "nix", "hash", "path", vendor)
	if err != nil {
		t.Fatal(err)
	}
	got := strings.TrimSpace(string(out))
	if got != string(m[1]) && os.Getenv("UPDATE_GOLDEN") != "" {
		updated := strings.Replace(string(flake), string(m[1]), got, 1)
		if err := os.WriteFile("../../flake.nix", []byte(updated), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	if got != string(m[1]) {
		t.Fatalf("flake.nix vendorHash = %s, but go.sum needs %s: update flake.nix (or run with UPDATE_GOLDEN=1)", m[1], got)
	}
}

// Evaluates the flake's outputs against a stand-in nixpkgs (the real one is
// not reachable offline) to check their shape: lib.mkHive is the embedded
// library, the package builds cmd/nix-hive, the app runs it.
func TestFlakeOutputs(t *testing.T) {
	nixtest.Require(t)
	root, _ := filepath.Abs("../..")
	expr := `
let
  flake = import ` + root + `/flake.nix;
  fakePkgs = {
    buildGoModule = args: args // { type = "derivation"; outPath = "/nix/store/fake-nix-hive"; };
    mkShell = args: args;
    stdenv.hostPlatform.system = "x86_64-linux";
    go = "go"; gopls = "gopls"; openssh = "openssh"; nix = "nix"; nftables = "nft"; iproute2 = "ip";
  };
  nixpkgs = {
    lib = { genAttrs = names: f: builtins.listToAttrs (map (n: { name = n; value = f n; }) names); platforms.unix = [ ]; };
    legacyPackages = builtins.listToAttrs (map (n: { name = n; value = fakePkgs; }) [ "x86_64-linux" "aarch64-linux" "x86_64-darwin" "aarch64-darwin" ]);
  };
  out = flake.outputs { self = out; inherit nixpkgs; };
  pkg = out.packages.x86_64-linux.default;
  hive = out.lib.mkHive { systems.a.toplevel = null; instances.x.system = "a"; };
in {
  subPackages = pkg.subPackages;
  mainProgram = pkg.meta.mainProgram;
  app = out.apps.x86_64-linux.default.program;
  instances = builtins.attrNames hive.inventory.instances;
  module = builtins.isPath out.nixosModules.default;
}`
	r := &nixcmd.Runner{}
	var got struct {
		SubPackages []string `json:"subPackages"`
		MainProgram string   `json:"mainProgram"`
		App         string   `json:"app"`
		Instances   []string `json:"instances"`
		Module      bool     `json:"module"`
	}
	out, err := r.Run(context.Background(), "nix", "eval", "--json", "--impure", "--expr", expr)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatal(err)
	}
	if len(got.SubPackages) != 1 || got.SubPackages[0] != "cmd/nix-hive" || got.MainProgram != "nix-hive" ||
		got.App != "/nix/store/fake-nix-hive/bin/nix-hive" || len(got.Instances) != 1 || !got.Module {
		t.Fatalf("unexpected flake outputs: %+v", got)
	}
}
