package cli_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nix-hive/nix-hive/internal/nixtest"
	"github.com/nix-hive/nix-hive/lab"
	"github.com/nix-hive/nix-hive/lab/labtest"
	"github.com/nix-hive/nix-hive/nixcmd"
)

// A fleet mid-upgrade, in each direction: the deploy host on one Nix
// release, a store on the other, its consumer on the first again. Signed
// closures go from the deploy host to the store and are substituted by the
// consumer across releases, and a magic rollback on the consumer returns
// it to its previous generation with its own release's nix-env.
func TestMixedNixReleases(t *testing.T) {
	nixtest.Require(t)
	other := nixtest.Other(t)
	this, err := exec.LookPath("nix")
	if err != nil {
		t.Fatal(err)
	}
	this, _ = filepath.Abs(filepath.Dir(this))
	if this == other {
		t.Fatalf("the nix on PATH is NIX_HIVE_TEST_NIX's (%s): nothing to mix; run this test with the system's Nix first on PATH", other)
	}
	t.Run("deploy host on the newer release", func(t *testing.T) { testMixedFleet(t, other, this) })
	t.Run("deploy host on the older release", func(t *testing.T) { testMixedFleet(t, this, other) })
}

// testMixedFleet deploys from a deploy host running the Nix in deployNix
// to a store (app-1) running hostNix and its consumer (app-2) running
// deployNix.
func testMixedFleet(t *testing.T, deployNix, hostNix string) {
	t.Setenv("PATH", deployNix+":"+os.Getenv("PATH"))
	l := labtest.New(t, lab.Config{Names: []string{"app-1", "app-2"}, NixFor: map[string]string{"app-1": hostNix, "app-2": deployNix}})
	root, _ := filepath.Abs("..")
	f := &faultLab{t: t, lab: l, dir: t.TempDir()}
	f.write("lab.nix", l.HiveNix())
	f.write("hive.nix", fmt.Sprintf(`let
  lab = import ./lab.nix;
  ts = import %q;
  variants = import ./variants.nix;
in {
  signing.keyFile = "keys/hive.sec";
  systems = builtins.mapAttrs (n: _: { toplevel = ts ({ name = "app"; } // (variants.${n} or { })); }) lab;
  instances = {
    app-1 = lab.app-1 // { system = "app-1"; };
    app-2 = lab.app-2 // { system = "app-2"; store = "app-1"; };
  };
}`, filepath.Join(root, "examples", "testsystems")))
	f.variants(nil)
	keygenTrusted(t, f.run, l, nil)

	out, err := exec.Command("nix", "--version").Output()
	releases := map[string]string{"deploy host": strings.TrimSpace(string(out))}
	for _, h := range l.Hosts {
		out, err = h.Exec(t.Context(), "nix", "--version")
		releases[h.Name] = strings.TrimSpace(string(out))
	}
	t.Logf("releases: %v", releases)
	if err != nil || releases["deploy host"] == releases["app-1"] || releases["app-2"] != releases["deploy host"] {
		t.Fatalf("not a mixed fleet: %v", releases)
	}

	code, _, events := f.run("deploy", "--connect-timeout", faultConnect)
	if code != 0 {
		t.Fatal("deploy failed")
	}
	v1 := map[string]string{"app-1": f.built("app-1"), "app-2": f.built("app-2")}
	if !strings.Contains(events, "app-2 [wave 1] substitute ok") {
		t.Errorf("app-2 did not substitute from app-1:\n%s", events)
	}
	// The consumer's copy carries the hive's signature, read with the
	// consumer's own nix in its release's JSON shape.
	out, err = l.Host("app-2").Exec(t.Context(), "nix", "--extra-experimental-features", "nix-command", "path-info", "--json", "--sigs", v1["app-2"])
	if err != nil {
		t.Fatalf("path-info on app-2: %v\n%s", err, out)
	}
	infos, err := nixcmd.DecodePathInfo(out)
	if err != nil || len(infos) != 1 || !infos[0].Valid || len(infos[0].Signatures) == 0 {
		t.Errorf("app-2's copy of its system: %+v %v, want it valid and signed", infos, err)
	}

	// A system that stops sshd on the consumer is rolled back by the
	// consumer's own job; the store keeps its new system.
	f.variants(map[string]string{"app-1": `version = "2";`, "app-2": `version = "2"; sshd = "off";`})
	code, out2, _ := f.run("deploy", "--connect-timeout", faultConnect, "--confirm-timeout", "3s")
	if code == 0 {
		t.Error("deploy exited 0 although app-2 had to be rolled back")
	}
	summaryHas(t, out2, "app-2", "rolled-back")
	summaryHas(t, out2, "app-1", " ok ")
	f.expect(map[string]hostSystem{"app-1": {active: f.built("app-1")}, "app-2": {active: v1["app-2"]}})
}
