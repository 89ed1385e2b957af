package cli_test

import (
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The hive's nix.build.flags reach the build: with Nix's own remote
// builders (--builders, and --max-jobs 0 so that nothing builds here),
// app-2 of the lab builds app-1's new system, which the deploy then signs,
// pushes and activates as usual. The builder's store holds the system
// (nothing else put it there), and app-1 runs it.
func TestBuildFlagsRemoteBuilder(t *testing.T) {
	f := newFaultLab(t, 2)
	f.baseline()
	b := f.lab.Host("app-2")
	hostKey := base64.StdEncoding.EncodeToString([]byte(b.HostKey))
	builders := fmt.Sprintf("ssh-ng://root@%s x86_64-linux %s 1 1 - - %s", b.Addr, f.lab.ClientKey, hostKey)
	hive, err := os.ReadFile(filepath.Join(f.dir, "hive.nix"))
	if err != nil {
		t.Fatal(err)
	}
	f.write("hive.nix", strings.Replace(string(hive), `signing.keyFile = "keys/hive.sec";`,
		`signing.keyFile = "keys/hive.sec"; nix.build.flags = [ "--builders" "`+builders+`" "--max-jobs" "0" ];`, 1))
	// A version no earlier run built, so that this one must build it.
	version := fmt.Sprintf("remote%d", time.Now().UnixNano())
	f.variants(map[string]string{"app-1": `version = "` + version + `";`})
	code, out, _ := f.run("deploy", "--connect-timeout", faultConnect, "app-1")
	if code != 0 {
		t.Fatalf("deploy: exit %d", code)
	}
	summaryHas(t, out, "app-1", " ok ")
	path := f.built("app-1")
	if !strings.HasSuffix(path, "-"+version) {
		t.Fatalf("app-1's system is %s", path)
	}
	if _, err := os.Stat(b.Path(path)); err != nil {
		t.Errorf("the builder's store lacks %s: it was not built there (%v)", path, err)
	}
	if got := f.system("app-1"); got.active != path {
		t.Errorf("app-1 runs %+v, want %s", got, path)
	}
}

// --build-host INSTANCE, the hive's nix.build.host and a system's
// build.host build on an instance, in its store, where the outputs stay:
// signed there with the hive's key from here, they go from the builder
// straight to the stores, which substitute them checking that signature,
// and the deploy host never holds them. A host that cannot substitute
// from the builder gets them through this machine; a build host that is
// no instance is a hive error.
func TestBuildHost(t *testing.T) {
	f := newFaultLab(t, 4)
	root, _ := filepath.Abs("..")
	f.write("extra.nix", "{ }")
	f.write("hive.nix", fmt.Sprintf(`let
  lab = import ./lab.nix;
  ts = import %q;
  variants = import ./variants.nix;
  extra = import ./extra.nix;
in {
  signing.keyFile = "keys/hive.sec";
  systems = builtins.mapAttrs (n: _: { toplevel = ts ({ name = n; } // (variants.${n} or { })); } // (extra.systems.${n} or { })) lab;
  instances = builtins.mapAttrs (n: v: v // { system = n; }
    // (if n == "app-2" || n == "app-3" then { store = "app-1"; } else { })
    // (extra.instances.${n} or { })) lab;
} // (extra.hive or { })`, filepath.Join(root, "examples", "testsystems")))
	v1 := f.baseline()
	b := f.lab.Host("app-4")
	// fresh gives hosts a version no earlier run built, so that this one
	// must build it, and returns it.
	fresh := func(hosts ...string) string {
		version := fmt.Sprintf("bh%d", time.Now().UnixNano())
		v := map[string]string{}
		for _, h := range hosts {
			v[h] = `version = "` + version + `";`
		}
		f.variants(v)
		return version
	}
	deploy := func(want int, args ...string) string {
		t.Helper()
		code, out, errOut := f.run(append([]string{"deploy", "--connect-timeout", faultConnect}, args...)...)
		if code != want {
			t.Fatalf("deploy %s: exit %d, want %d", strings.Join(args, " "), code, want)
		}
		return out + errOut // the summary, then the events
	}
	// onBuilder checks that host runs its system of version, which the
	// builder's store holds and this machine's does not.
	onBuilder := func(host, version string) string {
		t.Helper()
		path := f.built(host)
		if !strings.HasSuffix(path, "-"+version) {
			t.Fatalf("%s's system is %s, want version %s", host, path, version)
		}
		if _, err := os.Stat(b.Path(path)); err != nil {
			t.Errorf("the builder's store lacks %s (%v)", path, err)
		}
		if _, err := os.Lstat(path); err == nil {
			t.Errorf("this machine's store holds %s, which was built on app-4", path)
		}
		if got := f.system(host); got.active != path {
			t.Errorf("%s runs %+v, want %s", host, got, path)
		}
		if on := f.state().Systems[host].On; on != "app-4" {
			t.Errorf("hive.state says %s was built on %q", host, on)
		}
		return path
	}

	// The store app-1 and its consumers app-2 and app-3.
	version := fresh("app-1", "app-2", "app-3")
	out := deploy(0, "--build-host", "app-4", "app-1", "app-2", "app-3")
	for _, h := range []string{"app-1", "app-2", "app-3"} {
		summaryHas(t, out, h, " ok ")
		path := onBuilder(h, version)
		if _, err := os.Stat(f.lab.Host("app-1").Path(path)); err != nil {
			t.Errorf("the store app-1 lacks %s (%v)", path, err)
		}
	}
	// app-1 has no store: what it substituted from is the builder.
	if !strings.Contains(out, "app-1 [wave 1] substitute ok") || strings.Contains(out, "app-1 [wave 1] push") {
		t.Errorf("app-1 did not substitute from the builder:\n%s", out)
	}

	// A consumer that does not trust the hive's key refuses what the
	// builder signed; the others take it.
	app3 := f.system("app-3").active
	if err := f.lab.Host("app-3").WriteNixConf("trusted-public-keys = other-1:" + strings.Repeat("A", 43) + "="); err != nil {
		t.Fatal(err)
	}
	version = fresh("app-1", "app-2", "app-3")
	out = deploy(1, "--build-host", "app-4", "app-1", "app-2", "app-3")
	summaryHas(t, out, "app-3", "failed", "not signed by a key in the host's trusted-public-keys")
	if got := f.system("app-3"); got.active != app3 {
		t.Errorf("app-3 runs %s after refusing the closure, want %s", got.active, app3)
	}
	onBuilder("app-1", version)
	onBuilder("app-2", version)
	if err := f.lab.Host("app-3").WriteNixConf("trusted-public-keys = " + strings.TrimSpace(readFile(t, filepath.Join(f.dir, "keys", "hive.pub")))); err != nil {
		t.Fatal(err)
	}

	// A system's own build.host, and the hive's nix.build.host.
	f.write("extra.nix", `{ systems.app-1.build.host = "app-4"; }`)
	version = fresh("app-1")
	deploy(0, "app-1")
	onBuilder("app-1", version)
	f.write("extra.nix", `{ hive.nix.build.host = "app-4"; }`)
	version = fresh("app-1")
	deploy(0, "app-1")
	onBuilder("app-1", version)

	// A store that cannot log in to the builder gets the closure through
	// this machine.
	f.write("extra.nix", `{ instances.app-4.storeUser = "nixhive-nobody"; }`)
	version = fresh("app-1")
	out = deploy(0, "--build-host", "app-4", "app-1")
	if !strings.Contains(out, "not substituted from its build host app-4") || !strings.Contains(out, "the closure comes through this machine") {
		t.Errorf("no word of the way through this machine:\n%s", out)
	}
	path := f.built("app-1")
	if got := f.system("app-1"); !strings.HasSuffix(path, "-"+version) || got.active != path {
		t.Errorf("app-1 runs %+v, want %s", got, path)
	}
	if _, err := os.Lstat(path); err != nil {
		t.Errorf("the closure that came through this machine is not in its store: %v", err)
	}
	if got := f.system("app-4"); got.active != v1["app-4"] {
		t.Errorf("the builder's system changed: %s", got.active)
	}

	for _, c := range []struct{ extra, want string }{
		{`{ hive.nix.build.host = "app-9"; }`, `nix.build.host: unknown instance "app-9"`},
		{`{ systems.app-1.build.host = "app-9"; }`, `system "app-1": attribute build.host: unknown instance "app-9"`},
		{`{ systems.app-1.build.hots = "app-4"; }`, `system "app-1": build: unknown attribute hots; did you mean host?`},
	} {
		f.write("extra.nix", c.extra)
		if code, _, errOut := f.run("build"); code != 2 || !strings.Contains(errOut, c.want) {
			t.Errorf("%s: exit %d, want 2 and %q:\n%s", c.extra, code, c.want, errOut)
		}
	}
	f.write("extra.nix", "{ }")
	if code, _, errOut := f.run("build", "--build-host", "app-9"); code != 2 || !strings.Contains(errOut, `--build-host: no instance "app-9" in the hive`) {
		t.Errorf("--build-host app-9: exit %d:\n%s", code, errOut)
	}
}
