package cli_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Deploying what CI built: `nix-hive build` runs "in CI" and its systems
// go to a file:// binary cache; this machine then lacks them. deploy
// --systems with that build's output evaluates and builds nothing (the
// hive now says version 3, which is never built), fetches the closures
// from the cache with --from, checks the hive's signature and deploys
// them as usual. Without --from the missing paths are named; a path that
// is not signed by the hive's key is refused, naming it, whether it
// comes from the cache or is already here; a file that names no store
// path is an error naming the file. Hosts refused keep what they ran.
func TestDeployPrebuilt(t *testing.T) {
	f := newFaultLab(t, 2)
	v1 := f.baseline()

	// CI: build version 2, copy it to a binary cache, and forget it here.
	// A version of its own, so that no other test's roots keep it alive
	// here when it is deleted.
	ci := fmt.Sprintf("ci%d", time.Now().UnixNano())
	f.variants(map[string]string{"app-1": `version = "` + ci + `";`, "app-2": `version = "` + ci + `";`})
	code, out, _ := f.run("build")
	if code != 0 {
		t.Fatal("CI's build failed")
	}
	f.write("build.json", out)
	var build struct {
		Systems map[string]struct{ OutPath string }
	}
	if err := json.Unmarshal([]byte(out), &build); err != nil {
		t.Fatal(err)
	}
	v2 := map[string]string{}
	for s, b := range build.Systems {
		v2[s] = b.OutPath
	}
	cache := t.TempDir()
	nix(t, "copy", "--to", "file://"+cache, v2["app-1"], v2["app-2"])
	if err := os.RemoveAll(filepath.Join(f.dir, ".nix-hive", "gcroots")); err != nil {
		t.Fatal(err)
	}
	os.Remove(filepath.Join(f.dir, "hive.state"))
	for _, p := range []string{v2["app-1"], v2["app-2"]} {
		nixStore(t, "--delete", p)
	}
	// The hive moves on; what CI built is what gets deployed.
	f.variants(map[string]string{"app-1": `version = "3";`, "app-2": `version = "3";`})
	unchanged := func(what string) {
		t.Helper()
		if hosts, wrong := f.expect(map[string]hostSystem{"app-1": {active: v1["app-1"]}, "app-2": {active: v1["app-2"]}}); wrong > 0 {
			t.Errorf("%s: %s", what, hosts)
		}
	}

	code, _, errOut := f.run("deploy", "--systems", filepath.Join(f.dir, "build.json"))
	if code == 0 || !strings.Contains(errOut, "not in this machine's Nix store: "+v2["app-1"]+" (app-1)") || !strings.Contains(errOut, "--from URL") {
		t.Errorf("without --from: exit %d:\n%s", code, errOut)
	}
	unchanged("without --from")

	code, out, _ = f.run("deploy", "--systems", filepath.Join(f.dir, "build.json"), "--from", "file://"+cache)
	if code != 0 {
		t.Fatalf("deploy --systems --from: exit %d", code)
	}
	summaryHas(t, out, "app-1", " ok ")
	if hosts, wrong := f.expect(map[string]hostSystem{"app-1": {active: v2["app-1"]}, "app-2": {active: v2["app-2"]}}); wrong > 0 {
		t.Errorf("after deploy --systems: %s", hosts)
	}
	if got := f.state().Systems["app-1"].OutPath; got != v2["app-1"] {
		t.Errorf("hive.state records %s for app-1, want %s", got, v2["app-1"])
	}
	if v := strings.TrimSpace(readFile(t, f.lab.Host("app-1").Path("/run/current-system/nixos-version"))); v != ci {
		t.Errorf("app-1 runs version %q, want CI's %q (the hive's 3 must not be built)", v, ci)
	}

	// A system nobody signed: built here, outside the hive.
	ts, _ := filepath.Abs("../examples/testsystems")
	unsigned := strings.TrimSpace(string(nixBuild(t, ts, `{ name = "app"; version = "tampered`+ci+`"; }`)))
	f.write("unsigned.json", `{"app-1": "`+unsigned+`", "app-2": "`+v2["app-2"]+`"}`)
	code, _, errOut = f.run("deploy", "--systems", filepath.Join(f.dir, "unsigned.json"), "app-1")
	if code == 0 || !strings.Contains(errOut, "not signed by the hive's key") || !strings.Contains(errOut, unsigned) {
		t.Errorf("an unsigned path here: exit %d:\n%s", code, errOut)
	}
	other := t.TempDir()
	nix(t, "copy", "--to", "file://"+other, unsigned)
	nixStore(t, "--delete", unsigned)
	code, _, errOut = f.run("deploy", "--systems", filepath.Join(f.dir, "unsigned.json"), "--from", "file://"+other, "app-1")
	if code == 0 || !strings.Contains(errOut, unsigned) {
		t.Errorf("an unsigned path in the cache: exit %d:\n%s", code, errOut)
	}
	// A path the hive signed, changed in the cache afterwards: its
	// content no longer matches the hash the signature covers.
	tv := "tamper" + ci
	f.variants(map[string]string{"app-1": `version = "` + tv + `";`})
	if code, _, _ := f.run("build", "app-1"); code != 0 {
		t.Fatal("the build to tamper with failed")
	}
	tampered := f.built("app-1")
	changed := t.TempDir()
	nix(t, "copy", "--to", "file://"+changed+"?compression=none", tampered)
	nars, _ := filepath.Glob(filepath.Join(changed, "nar", "*.nar"))
	for _, n := range nars {
		b, err := os.ReadFile(n)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(n, bytes.ReplaceAll(b, []byte(tv), []byte(strings.Repeat("x", len(tv)))), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.RemoveAll(filepath.Join(f.dir, ".nix-hive", "gcroots")); err != nil {
		t.Fatal(err)
	}
	nixStore(t, "--delete", tampered)
	f.write("tampered.json", `{"app-1": "`+tampered+`", "app-2": "`+v2["app-2"]+`"}`)
	code, _, errOut = f.run("deploy", "--systems", filepath.Join(f.dir, "tampered.json"), "--from", "file://"+changed, "app-1")
	if code == 0 || !strings.Contains(errOut, tampered) {
		t.Errorf("a path changed in the cache: exit %d:\n%s", code, errOut)
	}
	if exec.Command("nix-store", "--check-validity", tampered).Run() == nil {
		t.Errorf("the changed path %s was taken into this machine's store", tampered)
	}

	f.write("bad.json", `{"app-1": "/etc/passwd"}`)
	if code, _, errOut := f.run("deploy", "--systems", filepath.Join(f.dir, "bad.json")); code == 0 || !strings.Contains(errOut, `bad.json: system app-1: "/etc/passwd" is not a store path`) {
		t.Errorf("a file naming no store path: exit %d:\n%s", code, errOut)
	}
	if code, _, errOut := f.run("deploy", "--from", "file://"+other); code != 2 || !strings.Contains(errOut, "--from needs --systems") {
		t.Errorf("--from alone: exit %d:\n%s", code, errOut)
	}
	if hosts, wrong := f.expect(map[string]hostSystem{"app-1": {active: v2["app-1"]}, "app-2": {active: v2["app-2"]}}); wrong > 0 {
		t.Errorf("after the refusals: %s", hosts)
	}
}

func nix(t *testing.T, args ...string) []byte {
	t.Helper()
	out, err := exec.Command("nix", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("nix %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func nixStore(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("nix-store", args...).CombinedOutput(); err != nil {
		t.Fatalf("nix-store %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func nixBuild(t *testing.T, file, args string) []byte {
	t.Helper()
	out, err := exec.Command("nix-build", "--no-out-link", "-E", "import "+file+" "+args).Output()
	if err != nil {
		t.Fatalf("nix-build %s: %v", file, err)
	}
	return out
}
