package cli_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nix-hive/nix-hive/internal/nixtest"
	"github.com/nix-hive/nix-hive/lab"
	"github.com/nix-hive/nix-hive/lab/labtest"
)

// Systems written as NixOS configurations (modules with specialArgs, and a
// configuration function) go through lib/hive.nix and nixpkgs' real
// module system, with nix-hive's module, to toplevels the lab hosts
// switch to: what the modules decided (hiveSystem, specialArgs, the
// module's nix.settings and nix.sshServe, key units) is on the hosts, and
// the consumer substituted its system from the store the module names.
func TestModulesSystemsDeploy(t *testing.T) {
	nixtest.Require(t)
	nixpkgs := nixtest.Nixpkgs(t)
	l := labtest.New(t, lab.Config{Names: []string{"web-1", "db-1"}})
	f := &faultLab{t: t, lab: l, dir: t.TempDir()}
	module, _ := filepath.Abs("../lib/module.nix")
	f.write("lab.nix", l.HiveNix())
	f.write("hive.nix", fmt.Sprintf(`let lab = import ./lab.nix; in {
  paths.nixpkgs = %q;
  signing.keyFile = "keys/hive.sec";
  defaults.keys.token = { text = "t0ken"; };
  systems.web = { modules = [ ./web.nix %s ]; specialArgs.motd = "hello"; };
  systems.db.configuration = { hiveSystem, ... }: {
    imports = [ %s ];
    networking.hostName = "db";
    environment.etc.role.text = "I am ${hiveSystem}";
    nix-hive.serveStore = { enable = true; keys = [ "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDGSrPfYuT6k5ISHDBvBe99bAQ3db4hGeSIBlFd+syBj web-1" ]; };
  };
  instances = {
    db-1 = lab.db-1 // { system = "db"; };
    web-1 = lab.web-1 // { system = "web"; store = "db-1"; };
  };
}`, nixpkgs, module, module))
	pub := keygenTrusted(t, f.run, l, nil)
	f.write("web.nix", `{ hiveSystem, motd, ... }: {
  networking.hostName = hiveSystem;
  environment.etc.motd.text = "${motd} from ${hiveSystem}";
  nix-hive = { publicKey = "`+pub+`"; store = "ssh://db-1"; };
}`)
	code, out, events := f.run("deploy")
	if code != 0 {
		t.Fatalf("deploy exited %d", code)
	}
	summaryHas(t, out, "web-1", " ok ")
	summaryHas(t, out, "db-1", " ok ")
	etc := func(host, name string) string {
		t.Helper()
		b, err := os.ReadFile(l.Host(host).Path("/run/current-system/etc/" + name))
		if err != nil {
			t.Errorf("%s: %v", host, err)
		}
		return string(b)
	}
	if got := etc("web-1", "motd"); got != "hello from web" {
		t.Errorf("web-1 motd %q: specialArgs and hiveSystem did not reach the modules", got)
	}
	if got := etc("db-1", "role"); got != "I am db" {
		t.Errorf("db-1 role %q: hiveSystem did not reach the configuration", got)
	}
	for _, want := range []string{"substituters = ssh://db-1 https://cache.nixos.org/\n", " " + pub + "\n", "require-sigs = true\n"} {
		if conf := etc("web-1", "nix/nix.conf"); !strings.Contains(conf, want) {
			t.Errorf("web-1's system nix.conf lacks %q:\n%s", want, conf)
		}
	}
	if got := etc("db-1", "ssh/sshd_config.extra"); !strings.Contains(got, "ForceCommand nix-store --serve\n") {
		t.Errorf("db-1 does not serve its store read-only: %q", got)
	}
	for _, h := range []string{"web-1", "db-1"} {
		if got := etc(h, "nix-hive-test/units"); !strings.Contains(got, "token-key.service") {
			t.Errorf("%s's system declares units %q, want token-key.service from the hive's keys", h, got)
		}
		if got, _ := os.ReadFile(l.Host(h).Path("/run/keys/token")); string(got) != "t0ken" {
			t.Errorf("%s /run/keys/token = %q", h, got)
		}
	}
	if !strings.Contains(events, "web-1 [wave 1] substitute ok") {
		t.Errorf("web-1 did not substitute from db-1:\n%s", events)
	}
	// eval reads the same configuration the hosts got, and lib is
	// nixpkgs' lib.
	if code, out, _ := f.run("eval", "--instance", "db-1", "--attr", "environment.etc.role.text"); code != 0 || out != "\"I am db\"\n" {
		t.Errorf("eval --instance db-1 --attr environment.etc.role.text: exit %d, %q", code, out)
	}
	if code, out, _ := f.run("eval", "-E", "{ hive, lib }: lib.toUpper hive.instances.web-1.system"); code != 0 || out != "\"WEB\"\n" {
		t.Errorf("eval -E with nixpkgs' lib: exit %d, %q", code, out)
	}
}

// A hive as a flake, the way operators write one: nix-hive and nixpkgs as
// inputs (nix-hive's nixpkgs following the hive's), a modules system built
// with nixpkgs.lib.nixosSystem and nix-hive's NixOS module, deployed to a
// lab host.
func TestFlakeHiveDeploys(t *testing.T) {
	nixtest.Require(t)
	root, _ := filepath.Abs("..")
	nixpkgs := nixtest.Nixpkgs(t)
	writeFile(t, filepath.Join(nixpkgs, "flake.nix"), `{
  outputs = { self }: {
    lib = import ./lib // { nixosSystem = args: import ./nixos/lib/eval-config.nix args; };
  };
}`)
	// nix-hive's flake as a user's flake.lock would fetch it: its
	// flake.nix and lib/ (a copy, so that a path: input does not copy the
	// whole checkout into the store).
	nixHive := filepath.Join(t.TempDir(), "nix-hive")
	if err := os.MkdirAll(filepath.Join(nixHive, "lib"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"flake.nix", "lib/hive.nix", "lib/module.nix", "lib/eval.nix"} {
		data, err := os.ReadFile(filepath.Join(root, f))
		if err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(nixHive, f), string(data))
	}
	l := labtest.New(t, lab.Config{Names: []string{"web-1"}})
	// The signing key lives outside the flake: a path: flake's whole
	// directory is copied to the store.
	keys := t.TempDir()
	f := &faultLab{t: t, lab: l, dir: t.TempDir()}
	f.write("lab.nix", l.HiveNix())
	f.write("web.nix", `{ hiveSystem, motd, ... }: { environment.etc.motd.text = "${motd} from ${hiveSystem}"; }`)
	f.write("flake.nix", fmt.Sprintf(`{
  inputs.nixpkgs.url = "path:%s";
  inputs.nix-hive = { url = "path:%s"; inputs.nixpkgs.follows = "nixpkgs"; };
  outputs = { self, nixpkgs, nix-hive }: {
    hive = nix-hive.lib.mkHive {
      inherit nixpkgs;
      signing.keyFile = "%s/hive.sec";
      systems.web = { modules = [ ./web.nix nix-hive.nixosModules.default ]; specialArgs.motd = "flake"; };
      instances.web-1 = (import ./lab.nix).web-1 // { system = "web"; };
    };
  };
}`, nixpkgs, nixHive, keys))
	keygenTrusted(t, f.run, l, nil)
	if code, _, _ := f.run("deploy"); code != 0 {
		t.Fatal("deploy of the flake hive failed")
	}
	got, err := os.ReadFile(l.Host("web-1").Path("/run/current-system/etc/motd"))
	if err != nil || string(got) != "flake from web" {
		t.Errorf("web-1 motd %q %v, want the flake's modules system", got, err)
	}
	units, _ := os.ReadFile(l.Host("web-1").Path("/run/current-system/etc/nix-hive-test/units"))
	if string(units) != "" {
		t.Errorf("web-1 declares units %q although the hive has no keys", units)
	}
}
