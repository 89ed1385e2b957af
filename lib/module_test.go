package hivelib

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/nix-hive/nix-hive/internal/nixtest"
	"github.com/nix-hive/nix-hive/internal/testenv"
)

// nixpkgsLib unpacks nixpkgs' lib (../shared/nix/nixpkgs-lib.tar.gz, or
// $NIX_HIVE_NIXPKGS_LIB) and returns the directory holding lib/.
func nixpkgsLib(t *testing.T) string {
	t.Helper()
	tarball := os.Getenv("NIX_HIVE_NIXPKGS_LIB")
	if tarball == "" {
		tarball, _ = filepath.Abs("../../shared/nix/nixpkgs-lib.tar.gz")
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

// stubs declare the NixOS options lib/module.nix and the tests touch, so
// the real module system (lib.evalModules) can evaluate the module
// without all of NixOS.
const stubs = `{ lib, ... }: with lib; {
  options = {
    systemd.services = mkOption { type = types.attrsOf types.anything; default = { }; };
    systemd.paths = mkOption { type = types.attrsOf types.anything; default = { }; };
    systemd.tmpfiles.rules = mkOption { type = types.listOf types.str; default = [ ]; };
    users.groups = mkOption { type = types.attrsOf types.anything; default = { }; };
    nix.settings = mkOption { type = types.submodule { freeformType = types.attrsOf types.anything; }; default = { }; };
    nix.sshServe = mkOption { type = types.anything; default = { }; };
    system.build.toplevel = mkOption { type = types.anything; };
  };
}`

const fakePkgs = `{ writeShellScript = name: text: "/nix/store/fake-" + name; inotify-tools = "/nix/store/fake-inotify-tools"; }`

func evalJSON(t *testing.T, expr string, v any) {
	t.Helper()
	nixtest.Require(t)
	out, err := exec.Command("nix", "eval", "--json", "--impure", "--expr", expr).CombinedOutput()
	if err != nil {
		t.Fatalf("nix eval: %v\n%s", err, out)
	}
	if err := json.Unmarshal(out, v); err != nil {
		t.Fatalf("decode %s: %v", out, err)
	}
}

// The NixOS module with the real module system: /run/keys as NixOS has
// it, and per key a <name>-key.service active while the file exists and a
// path unit that starts it when the file appears.
func TestModuleKeysUnits(t *testing.T) {
	lib := nixpkgsLib(t)
	module, _ := filepath.Abs("module.nix")
	expr := `let
  lib = import ` + lib + `/lib;
  eval = lib.evalModules {
    modules = [ (` + stubs + `) ` + module + ` {
      nix-hive.keys.db-password = { user = "postgres"; group = "postgres"; };
      nix-hive.keys.tls = { dest = "/var/lib/keys/tls.pem"; mode = "0440"; upload = "post-activation"; };
    } ];
    specialArgs.pkgs = ` + fakePkgs + `;
  };
  c = eval.config;
in {
  tmpfiles = c.systemd.tmpfiles.rules;
  groups = builtins.attrNames c.users.groups;
  services = lib.mapAttrs (n: s: { inherit (s) description; cond = s.unitConfig.ConditionPathExists; exec = s.serviceConfig.ExecStart; }) c.systemd.services;
  paths = lib.mapAttrs (n: p: { exists = p.pathConfig.PathExists; wantedBy = p.wantedBy; }) c.systemd.paths;
  keys = c.nix-hive.keys;
}`
	var got struct {
		Tmpfiles []string
		Groups   []string
		Services map[string]struct{ Description, Cond, Exec string }
		Paths    map[string]struct {
			Exists   string
			WantedBy []string
		}
		Keys map[string]map[string]string
	}
	evalJSON(t, expr, &got)
	if !reflect.DeepEqual(got.Tmpfiles, []string{"d /run/keys 0750 root keys -"}) || !reflect.DeepEqual(got.Groups, []string{"keys"}) {
		t.Errorf("/run/keys: tmpfiles %q, groups %q", got.Tmpfiles, got.Groups)
	}
	for name, dest := range map[string]string{"db-password": "/run/keys/db-password", "tls": "/var/lib/keys/tls.pem"} {
		s, ok := got.Services[name+"-key"]
		if !ok || s.Cond != dest || s.Exec != "/nix/store/fake-"+name+"-key" {
			t.Errorf("%s-key.service: %+v (present %v), want it conditioned on %s", name, s, ok, dest)
		}
		p, ok := got.Paths[name+"-key"]
		if !ok || p.Exists != dest || !reflect.DeepEqual(p.WantedBy, []string{"multi-user.target"}) {
			t.Errorf("%s-key.path: %+v (present %v)", name, p, ok)
		}
	}
	if k := got.Keys["tls"]; k["mode"] != "0440" || k["user"] != "root" || k["upload"] != "post-activation" {
		t.Errorf("nix-hive.keys.tls = %v", k)
	}
}

// A modules system that imports the module learns its keys' metadata from
// the hive (defaults' and the system's; never a value), so the units are
// declared where the system is built.
func TestHiveModuleMirrorsKeys(t *testing.T) {
	lib := nixpkgsLib(t)
	dir := t.TempDir()
	module, _ := filepath.Abs("module.nix")
	hive, _ := filepath.Abs("hive.nix")
	// A stand-in nixpkgs whose eval-config is lib.evalModules with the
	// stubs; its toplevel is the keys the module saw.
	evalConfig := `{ system, modules, specialArgs ? { } }:
let lib = import ` + lib + `/lib; in
lib.evalModules {
  modules = modules ++ [ (` + stubs + `) ({ config, ... }: { system.build.toplevel = config.nix-hive.keys; }) ];
  specialArgs = specialArgs // { pkgs = ` + fakePkgs + `; };
}`
	if err := os.MkdirAll(filepath.Join(dir, "nixpkgs", "nixos", "lib"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "nixpkgs", "nixos", "lib", "eval-config.nix"), []byte(evalConfig), 0o644); err != nil {
		t.Fatal(err)
	}
	expr := `(import ` + hive + `).mkHive {
  paths.nixpkgs = ` + filepath.Join(dir, "nixpkgs") + `;
  defaults.keys.shared = { text = "NOT-IN-METADATA"; };
  systems.web = { modules = [ ` + module + ` ]; keys.tls = { command = "pass tls"; user = "nginx"; }; };
  instances.web-1 = { system = "web"; keys.own = { text = "x"; }; };
}`
	var got map[string]map[string]string
	evalJSON(t, "("+expr+").toplevels.web", &got)
	want := map[string]map[string]string{
		"shared": {"dest": "/run/keys/shared", "user": "root", "group": "root", "mode": "0400", "upload": "pre-activation"},
		"tls":    {"dest": "/run/keys/tls", "user": "nginx", "group": "root", "mode": "0400", "upload": "pre-activation"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("nix-hive.keys of the system = %v\nwant %v", got, want)
	}
	b, _ := json.Marshal(got)
	if strings.Contains(string(b), "NOT-IN-METADATA") || strings.Contains(string(b), "pass tls") {
		t.Errorf("the system's key metadata holds a value or a source: %s", b)
	}
}
