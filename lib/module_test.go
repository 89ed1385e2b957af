package hivelib

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/nix-hive/nix-hive/internal/nixtest"
)

// evalNixOS evaluates modules (Nix expressions, with `module` bound to
// lib/module.nix) with the NixOS stand-in's eval-config.nix, on nixpkgs'
// real module system, and decodes `result` (a Nix expression over
// `config`) into v. A failed evaluation is returned as its message.
func evalNixOS(t *testing.T, nixpkgs string, modules []string, result string, v any) error {
	t.Helper()
	module, _ := filepath.Abs("module.nix")
	expr := `let
  module = ` + module + `;
  config = (import ` + nixpkgs + `/nixos/lib/eval-config.nix { modules = [ ` + strings.Join(modules, " ") + ` ]; }).config;
in ` + result
	out, err := exec.Command("nix", "eval", "--json", "--impure", "--expr", expr).CombinedOutput()
	if err != nil {
		return &evalError{string(out)}
	}
	if err := json.Unmarshal(out, v); err != nil {
		t.Fatalf("decode %s: %v", out, err)
	}
	return nil
}

type evalError struct{ msg string }

func (e *evalError) Error() string { return e.msg }

// The settings lib/module.nix makes, merged by the real module system with
// NixOS's own definitions (cache.nixos.org) under NixOS's option types: a
// consumer trusts the hive key and substitutes from its store first; a
// store serves its store read-only to the consumers' keys, as NixOS's
// nix.sshServe does; a host can be both.
func TestModuleNixSettings(t *testing.T) {
	nixtest.Require(t)
	nixpkgs := nixtest.Nixpkgs(t)
	const (
		hiveKey     = "hive-1:a7RJ08eMPX1tbUR8C2N1jnfhO8TmOQACJJdmILnd/2E="
		cacheKey    = "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY="
		consumerKey = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDGSrPfYuT6k5ISHDBvBe99bAQ3db4hGeSIBlFd+syBj www-1"
	)
	consumer := `{ nix-hive.publicKey = "` + hiveKey + `"; nix-hive.store = "ssh://nix-ssh@portico"; }`
	store := `{ nix-hive.serveStore = { enable = true; keys = [ "` + consumerKey + `" ]; }; }`
	type settings struct {
		Substituters      []string `json:"substituters"`
		TrustedPublicKeys []string `json:"trusted-public-keys"`
		RequireSigs       bool     `json:"require-sigs"`
	}
	type result struct {
		Settings    settings
		SSHServe    struct{ Enable bool }
		NixSSH      []string
		ExtraConfig string
	}
	tests := []struct {
		name     string
		modules  []string
		settings settings
		serves   bool
	}{
		{"neither", nil, settings{[]string{"https://cache.nixos.org/"}, []string{cacheKey}, true}, false},
		{"consumer", []string{consumer}, settings{[]string{"ssh://nix-ssh@portico", "https://cache.nixos.org/"}, []string{cacheKey, hiveKey}, true}, false},
		{"store", []string{store}, settings{[]string{"https://cache.nixos.org/"}, []string{cacheKey}, true}, true},
		{"both", []string{consumer, store}, settings{[]string{"ssh://nix-ssh@portico", "https://cache.nixos.org/"}, []string{cacheKey, hiveKey}, true}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got result
			err := evalNixOS(t, nixpkgs, append([]string{"module"}, tt.modules...), `{
  settings = { inherit (config.nix.settings) substituters trusted-public-keys require-sigs; };
  sshServe.enable = config.nix.sshServe.enable;
  nixSSH = config.users.users.nix-ssh.openssh.authorizedKeys.keys or [ ];
  extraConfig = config.services.openssh.extraConfig;
}`, &got)
			if err != nil {
				t.Fatal(err)
			}
			slices.Sort(got.Settings.TrustedPublicKeys)
			if !reflect.DeepEqual(got.Settings, tt.settings) {
				t.Errorf("nix.settings = %+v\nwant %+v", got.Settings, tt.settings)
			}
			if got.SSHServe.Enable != tt.serves {
				t.Errorf("nix.sshServe.enable = %v, want %v", got.SSHServe.Enable, tt.serves)
			}
			if tt.serves {
				if !reflect.DeepEqual(got.NixSSH, []string{consumerKey}) || !strings.Contains(got.ExtraConfig, "ForceCommand nix-store --serve\n") {
					t.Errorf("serving: nix-ssh keys %q, sshd config %q; want the consumers' keys and a read-only nix-store --serve", got.NixSSH, got.ExtraConfig)
				}
			}
		})
	}
}

// The module system checks the module's options as NixOS would: a value
// of the wrong type is refused naming the option, and an operator's own
// require-sigs wins over the module's default.
func TestModuleTypesAndPriorities(t *testing.T) {
	nixtest.Require(t)
	nixpkgs := nixtest.Nixpkgs(t)
	var v any
	err := evalNixOS(t, nixpkgs, []string{"module", `{ nix-hive.store = 42; }`}, "config.nix.settings.substituters", &v)
	if err == nil || !strings.Contains(err.Error(), "nix-hive.store") || !strings.Contains(err.Error(), "is not of type") {
		t.Errorf("a number as the store: %v, want a type error naming nix-hive.store", err)
	}
	err = evalNixOS(t, nixpkgs, []string{"module", `{ nix-hive.keys.x.upload = "later"; }`}, "config.nix-hive.keys", &v)
	if err == nil || !strings.Contains(err.Error(), "nix-hive.keys.x.upload") {
		t.Errorf("an unknown upload point: %v, want an error naming nix-hive.keys.x.upload", err)
	}
	err = evalNixOS(t, nixpkgs, []string{"module", `{ nix-hive.keys.x.mode = "rw-r-----"; }`}, "config.nix-hive.keys", &v)
	if err == nil || !strings.Contains(err.Error(), "nix-hive.keys.x.mode") {
		t.Errorf("a mode that is not octal: %v, want an error naming nix-hive.keys.x.mode", err)
	}
	var sigs bool
	if err := evalNixOS(t, nixpkgs, []string{"module", `{ nix.settings.require-sigs = false; }`}, "config.nix.settings.require-sigs", &sigs); err != nil || sigs {
		t.Errorf("require-sigs set false by the operator: %v %v, want false", sigs, err)
	}
}

// /run/keys as NixOS has it, and per key a <name>-key.service active
// while the file exists and a path unit that starts it when it appears.
func TestModuleKeysUnits(t *testing.T) {
	nixtest.Require(t)
	nixpkgs := nixtest.Nixpkgs(t)
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
	err := evalNixOS(t, nixpkgs, []string{"module", `{
  nix-hive.keys.db-password = { user = "postgres"; group = "postgres"; };
  nix-hive.keys.tls = { dest = "/var/lib/keys/tls.pem"; mode = "0440"; upload = "post-activation"; };
}`}, `{
  tmpfiles = config.systemd.tmpfiles.rules;
  groups = builtins.attrNames config.users.groups;
  services = builtins.mapAttrs (n: s: { inherit (s) description; cond = s.unitConfig.ConditionPathExists; exec = "${s.serviceConfig.ExecStart}"; }) config.systemd.services;
  paths = builtins.mapAttrs (n: p: { exists = p.pathConfig.PathExists; wantedBy = p.wantedBy; }) config.systemd.paths;
  keys = config.nix-hive.keys;
}`, &got)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got.Tmpfiles, []string{"d /run/keys 0750 root keys -"}) || !reflect.DeepEqual(got.Groups, []string{"keys"}) {
		t.Errorf("/run/keys: tmpfiles %q, groups %q", got.Tmpfiles, got.Groups)
	}
	for name, dest := range map[string]string{"db-password": "/run/keys/db-password", "tls": "/var/lib/keys/tls.pem"} {
		s, ok := got.Services[name+"-key"]
		if !ok || s.Cond != dest || !strings.HasPrefix(s.Exec, "/nix/store/") || !strings.HasSuffix(s.Exec, "-"+name+"-key") {
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

// nixosUsers declares users.users and users.groups as NixOS does
// (config/users-groups.nix: a user's name, group and extraGroups; a
// group's members, a list every definition adds to) and defines NixOS's
// own nobody (group nogroup) and the keys group.
const nixosUsers = `({ lib, ... }: with lib; {
  options.users.users = mkOption { type = types.attrsOf (types.submodule ({ name, ... }: { options = {
    name = mkOption { type = types.str; default = name; };
    group = mkOption { type = types.str; default = ""; };
    extraGroups = mkOption { type = types.listOf types.str; default = [ ]; };
  }; })); };
  options.users.groups = mkOption { type = types.attrsOf (types.submodule { options.members = mkOption { type = types.listOf types.str; default = [ ]; }; }); };
  config.users.users.root.group = "root";
  config.users.users.nobody.group = "nogroup";
  config.users.groups.keys = { };
})`

// /run/keys is NixOS's, root:keys 0750: the users who may read a key
// there (its owner, the users of its group, as its mode says) become
// members of keys; a key elsewhere, a key only root reads, or a group the
// mode does not let read adds no one, and others' members are kept.
func TestModuleKeysReaders(t *testing.T) {
	nixtest.Require(t)
	nixpkgs := nixtest.Nixpkgs(t)
	var members []string
	err := evalNixOS(t, nixpkgs, []string{"module", nixosUsers, `{
  users.users = {
    alice = { group = "users"; extraGroups = [ "nogroup" ]; };
    postgres.group = "postgres";
    carol.group = "users";
    dave.group = "staff";
    bob.group = "users";
    svc = { name = "service-account"; group = "svc"; };
    erin.group = "svc";
  };
  users.groups.keys.members = [ "operator" ];
  nix-hive.keys = {
    tls = { group = "nogroup"; mode = "0440"; };
    db-password = { user = "postgres"; group = "postgres"; };
    report = { user = "carol"; group = "staff"; mode = "400"; };
    elsewhere = { dest = "/var/lib/app/key"; user = "bob"; group = "users"; mode = "0440"; };
    svc = { user = "service-account"; group = "svc"; mode = "0400"; };
    root-only = { mode = "0440"; };
  };
}`}, "config.users.groups.keys.members", &members)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(members)
	want := []string{"alice", "carol", "nobody", "operator", "postgres", "service-account"}
	if !slices.Equal(members, want) {
		t.Errorf("members of keys: %q\nwant %q", members, want)
	}

	var none []string
	if err := evalNixOS(t, nixpkgs, []string{"module", nixosUsers, `{ nix-hive.keys.token = { }; }`}, "config.users.groups.keys.members", &none); err != nil || len(none) != 0 {
		t.Errorf("root's keys alone: members of keys %q (%v), want none", none, err)
	}
}

// A modules system that imports the module learns its keys' metadata from
// the hive (defaults' and the system's; never a value), so the units are
// declared where the system is built.
func TestHiveModuleMirrorsKeys(t *testing.T) {
	nixtest.Require(t)
	nixpkgs := nixtest.Nixpkgs(t)
	module, _ := filepath.Abs("module.nix")
	hive, _ := filepath.Abs("hive.nix")
	expr := `(import ` + hive + `).mkHive {
  paths.nixpkgs = ` + nixpkgs + `;
  defaults.keys.shared = { text = "NOT-IN-METADATA"; };
  systems.web = {
    modules = [ ` + module + ` ({ config, ... }: { environment.etc."keys.json".text = builtins.toJSON config.nix-hive.keys; }) ];
    keys.tls = { command = "pass tls"; user = "nginx"; };
  };
  instances.web-1 = { system = "web"; keys.own = { text = "x"; }; };
}`
	out, err := exec.Command("nix-build", "--no-out-link", "-E", "("+expr+").toplevels.web").CombinedOutput()
	if err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	toplevel := lines[len(lines)-1]
	data, err := os.ReadFile(filepath.Join(toplevel, "etc", "keys.json"))
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]map[string]string
	if err := json.Unmarshal(data, &got); err != nil {
		t.Fatal(err)
	}
	want := map[string]map[string]string{
		"shared": {"dest": "/run/keys/shared", "user": "root", "group": "root", "mode": "0400", "upload": "pre-activation"},
		"tls":    {"dest": "/run/keys/tls", "user": "nginx", "group": "root", "mode": "0400", "upload": "pre-activation"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("nix-hive.keys of the system = %v\nwant %v", got, want)
	}
	units, _ := os.ReadFile(filepath.Join(toplevel, "etc", "nix-hive-test", "units"))
	if !strings.Contains(string(units), "shared-key.service") || !strings.Contains(string(units), "tls-key.path") {
		t.Errorf("the system declares units %q, want shared-key and tls-key", units)
	}
	if strings.Contains(string(data), "NOT-IN-METADATA") || strings.Contains(string(data), "pass tls") {
		t.Errorf("the system's key metadata holds a value or a source: %s", data)
	}
}

// nix-hive.sudo.user installs the agent (lib/agent.sh) and a sudo rule
// that allows that login the agent alone, with or without its password.
func TestModuleSudoAgent(t *testing.T) {
	nixtest.Require(t)
	nixpkgs := nixtest.Nixpkgs(t)
	type rule struct {
		Users    []string
		RunAs    string
		Commands []struct {
			Command string
			Options []string
		}
	}
	var got struct {
		Rules    []rule
		Packages []string
		Drvs     []string
	}
	err := evalNixOS(t, nixpkgs, []string{"module", `{ nix-hive.sudo = { user = "deploy"; noPassword = true; }; }`},
		`{ rules = config.security.sudo.extraRules; packages = map (p: "${p}") config.environment.systemPackages; drvs = map (p: p.drvPath) config.environment.systemPackages; }`, &got)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Rules) != 1 || !slices.Equal(got.Rules[0].Users, []string{"deploy"}) || got.Rules[0].RunAs != "root" ||
		len(got.Rules[0].Commands) != 1 || got.Rules[0].Commands[0].Command != "/run/current-system/sw/bin/nix-hive-agent" ||
		!slices.Equal(got.Rules[0].Commands[0].Options, []string{"NOPASSWD"}) {
		t.Errorf("sudo rules: %+v", got.Rules)
	}
	if len(got.Packages) != 1 {
		t.Fatalf("system packages: %q, want the agent", got.Packages)
	}
	// Built, it is lib/agent.sh as a command.
	out, err := exec.Command("nix-store", "--realise", got.Drvs[0]).CombinedOutput()
	if err != nil {
		t.Fatalf("build the agent: %v\n%s", err, out)
	}
	built, err := os.ReadFile(filepath.Join(got.Packages[0], "bin", "nix-hive-agent"))
	want, _ := os.ReadFile("agent.sh")
	if err != nil || string(built) != string(want) {
		t.Errorf("the installed agent is not lib/agent.sh (%v)", err)
	}

	var none struct{ Rules []rule }
	if err := evalNixOS(t, nixpkgs, []string{"module", `{ }`}, `{ rules = config.security.sudo.extraRules; }`, &none); err != nil || len(none.Rules) != 0 {
		t.Errorf("without nix-hive.sudo.user: rules %+v, %v", none.Rules, err)
	}
}

// nix-hive.bootFallback: GRUB boots the saved entry (unless the operator
// says otherwise) and the watchdog is systemd's runtime watchdog, under
// NixOS's option types.
func TestModuleBootFallback(t *testing.T) {
	nixtest.Require(t)
	nixpkgs := nixtest.Nixpkgs(t)
	type boot struct {
		Grub     any     `json:"grub"`
		Watchdog *string `json:"watchdog"`
	}
	const result = `{ grub = config.boot.loader.grub.default; watchdog = config.systemd.watchdog.runtimeTime; }`
	for _, c := range []struct {
		name, module string
		grub         any
		watchdog     string
	}{
		{"off", `{ }`, float64(0), ""},
		{"on", `{ nix-hive.bootFallback = { enable = true; watchdog = "30s"; }; }`, "saved", "30s"},
		{"the operator's GRUB default wins", `{ nix-hive.bootFallback.enable = true; boot.loader.grub.default = 2; }`, float64(2), ""},
	} {
		var got boot
		if err := evalNixOS(t, nixpkgs, []string{"module", c.module}, result, &got); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		w := ""
		if got.Watchdog != nil {
			w = *got.Watchdog
		}
		if got.Grub != c.grub || w != c.watchdog {
			t.Errorf("%s: grub default %v, watchdog %q; want %v, %q", c.name, got.Grub, w, c.grub, c.watchdog)
		}
	}
}
