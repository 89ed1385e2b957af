package eval

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"testing"

	"github.com/nix-hive/nix-hive/internal/nixtest"
	"github.com/nix-hive/nix-hive/nixcmd"
)

func testSystems(t testing.TB) string {
	p, err := filepath.Abs("../examples/testsystems")
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func nonce(t testing.TB) string {
	b := make([]byte, 6)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// writeHive writes hive.nix into a new directory; @TS@ is the path of the
// test systems and @NONCE@ a value that makes this test's store paths new.
func writeHive(t testing.TB, text, n string) Source {
	t.Helper()
	dir := t.TempDir()
	text = strings.ReplaceAll(text, "@TS@", testSystems(t))
	text = strings.ReplaceAll(text, "@NONCE@", n)
	p := filepath.Join(dir, "hive.nix")
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	src, err := Locate(dir)
	if err != nil {
		t.Fatal(err)
	}
	return src
}

func newEvaluator(t testing.TB, src Source, stderr *bytes.Buffer) *Evaluator {
	r := &nixcmd.Runner{}
	if stderr != nil {
		r.Stderr = stderr
	}
	return &Evaluator{Src: src, Nix: r, CacheDir: t.TempDir()}
}

// storePaths lists store paths (not .drv files) whose name contains s.
func storePaths(t testing.TB, s string) []string {
	t.Helper()
	ents, err := os.ReadDir("/nix/store")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		if strings.Contains(e.Name(), s) && !strings.HasSuffix(e.Name(), ".drv") && !strings.HasSuffix(e.Name(), ".lock") {
			out = append(out, e.Name())
		}
	}
	sort.Strings(out)
	return out
}

const fleetHive = `
let ts = import @TS@; in {
  systems = {
    web.toplevel = builtins.trace "evaluating toplevel web" (ts { name = "web"; version = "@NONCE@"; });
    db.toplevel = builtins.trace "evaluating toplevel db" (ts { name = "db"; version = "@NONCE@"; });
    cache.toplevel = builtins.trace "evaluating toplevel cache" (ts { name = "cache"; version = "@NONCE@"; });
    # the same closure under a second name: built once
    web2.toplevel = ts { name = "web"; version = "@NONCE@"; };
  };
  instances = builtins.listToAttrs (builtins.genList (i: {
    name = "host-${toString i}";
    value = { system = builtins.elemAt [ "web" "db" "cache" "web2" ] (i - (i / 4) * 4); host = "192.0.2.${toString i}"; };
  }) 50);
}`

func TestBuildEachSystemOnce(t *testing.T) {
	nixtest.Require(t)
	n := nonce(t)
	src := writeHive(t, fleetHive, n)
	var stderr bytes.Buffer
	ev := newEvaluator(t, src, &stderr)
	ctx := context.Background()
	inv, err := ev.Inventory(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(inv.Instances) != 50 {
		t.Fatalf("instances = %d, want 50", len(inv.Instances))
	}
	targets, err := inv.Select(nil)
	if err != nil {
		t.Fatal(err)
	}
	systems := inv.SystemsOf(targets)
	if len(systems) != 4 {
		t.Fatalf("systems of targets = %v, want 4", systems)
	}
	built, err := ev.Build(ctx, inv, systems)
	if err != nil {
		t.Fatalf("build: %v\n%s", err, stderr.String())
	}
	if built["web"].OutPath != built["web2"].OutPath {
		t.Errorf("web and web2 have the same toplevel but different paths: %v %v", built["web"], built["web2"])
	}
	// Exactly three system closures were realised in the store.
	if got := storePaths(t, n); len(got) != 3 {
		t.Errorf("store paths with nonce: %v, want 3 (web, db, cache)", got)
	}
	for _, s := range []string{"web", "db", "cache"} {
		if c := strings.Count(stderr.String(), "evaluating toplevel "+s); c != 1 {
			t.Errorf("toplevel %s evaluated %d times, want 1", s, c)
		}
		if !ev.Valid(ctx, built[s].OutPath) {
			t.Errorf("%s: %s not valid after build", s, built[s].OutPath)
		}
	}
	if c := strings.Count(stderr.String(), "building '"); c != 3 {
		t.Errorf("nix built %d derivations, want 3:\n%s", c, stderr.String())
	}
}

func TestInventoryNeverForcesToplevels(t *testing.T) {
	nixtest.Require(t)
	src := writeHive(t, `{
  systems.a.toplevel = throw "toplevel a must not be evaluated for the inventory";
  systems.b.modules = [ (throw "modules of b must not be evaluated for the inventory") ];
  instances.x = { system = "a"; };
  instances.y = { system = "b"; tags = [ "t" ]; };
}`, "")
	inv, err := newEvaluator(t, src, nil).Inventory(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if inv.Instances["y"].System != "b" || inv.Instances["x"].Host != "x" || inv.Instances["x"].User != "root" || inv.Instances["x"].Port != 22 {
		t.Fatalf("unexpected inventory: %+v %+v", inv.Instances["x"], inv.Instances["y"])
	}
}

func TestInvalidHives(t *testing.T) {
	nixtest.Require(t)
	tests := []struct {
		name, hive string
		want       []string
	}{
		{"unknown system", `{ systems.a.toplevel = null; instances.x.system = "b"; }`,
			[]string{`instance "x": attribute system: unknown system "b" (known: a)`}},
		{"missing system", `{ systems.a.toplevel = null; instances.x.host = "h"; }`,
			[]string{`instance "x": attribute system: missing`}},
		{"unknown jump", `{ systems.a.toplevel = null; instances.x = { system = "a"; jump = "portco"; }; }`,
			[]string{`instance "x": attribute jump: unknown instance "portco"`}},
		{"unknown store", `{ systems.a.toplevel = null; instances.x = { system = "a"; store = "nope"; }; }`,
			[]string{`instance "x": attribute store: unknown instance "nope"`}},
		{"jump cycle", `{ systems.a.toplevel = null; instances = { x = { system = "a"; jump = "y"; }; y = { system = "a"; jump = "z"; }; z = { system = "a"; jump = "x"; }; }; }`,
			[]string{`instance "x": attribute jump: cycle x -> y -> z -> x`}},
		{"store cycle", `{ systems.a.toplevel = null; instances = { x = { system = "a"; store = "y"; }; y = { system = "a"; store = "x"; }; }; }`,
			[]string{`instance "x": attribute store: cycle x -> y -> x`}},
		{"self jump", `{ systems.a.toplevel = null; instances.x = { system = "a"; jump = "x"; }; }`,
			[]string{`instance "x": attribute jump: cycle x -> x`}},
		{"wrong types", `{ systems.a.toplevel = null; instances.x = { system = "a"; port = "22"; tags = "web"; user = 1; ssh = [ ]; }; }`,
			[]string{`instance "x": attribute port: expected a port number (1-65535), got a string`,
				`instance "x": attribute tags: expected a list of strings, got a string`,
				`instance "x": attribute user: expected a user name (string), got an integer`,
				`instance "x": attribute ssh: expected an attribute set of OpenSSH options`}},
		{"unknown attribute", `{ systems.a.toplevel = null; instances.x = { system = "a"; hostname = "h"; }; }`,
			[]string{`instance "x": unknown attribute hostname`}},
		{"system without toplevel", `{ systems.a = { }; instances.x.system = "a"; }`,
			[]string{`system "a": needs one of modules, configuration or toplevel`}},
		{"conflicting host keys", `{ systems.a.toplevel = null; instances = { x = { system = "a"; host = "h"; hostKey = "ssh-ed25519 AAA1"; }; y = { system = "a"; host = "h"; hostKey = "ssh-ed25519 AAA2"; }; }; }`,
			[]string{`instances "x", "y": attribute hostKey: the same address h:22 is given different host keys`}},
		{"instances not a set", `{ systems.a.toplevel = null; instances = [ ]; }`,
			[]string{`hive: attribute instances: expected an attribute set of instances, got a list`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := writeHive(t, tt.hive, "")
			_, err := newEvaluator(t, src, nil).Inventory(context.Background())
			var ie *InvalidHiveError
			if !errors.As(err, &ie) {
				t.Fatalf("want *InvalidHiveError, got %v", err)
			}
			msg := err.Error()
			if !strings.Contains(msg, src.File) {
				t.Errorf("error does not name the file %s:\n%s", src.File, msg)
			}
			for _, w := range tt.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error lacks %q:\n%s", w, msg)
				}
			}
		})
	}
}

// A fake nixpkgs whose eval-config.nix builds a derivation named after the
// nixpkgs it came from: enough to see which nixpkgs a system was built with
// and that modules reach it.
func fakeNixpkgs(t testing.TB, dir, label string) string {
	p := filepath.Join(dir, label)
	if err := os.MkdirAll(filepath.Join(p, "nixos", "lib"), 0o755); err != nil {
		t.Fatal(err)
	}
	evalConfig := fmt.Sprintf(`{ system, modules, specialArgs ? { } }:
let
  # a miniature module system: merge attrsets from each module
  cfg = builtins.foldl' (acc: m: acc // (if builtins.isFunction m then m { config = cfg; } else m)) { } modules;
in {
  config.system.build.toplevel = import @TS@ {
    name = "%s-${cfg.label or "none"}-${specialArgs.hiveSystem}";
    version = builtins.getEnv "NONCE";
    inherit system;
  };
}`, label)
	evalConfig = strings.ReplaceAll(evalConfig, "@TS@", testSystems(t))
	if err := os.WriteFile(filepath.Join(p, "nixos", "lib", "eval-config.nix"), []byte(evalConfig), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestSystemPathsOverrideHivePaths(t *testing.T) {
	nixtest.Require(t)
	n := nonce(t)
	t.Setenv("NONCE", n)
	dir := t.TempDir()
	hiveNixpkgs := fakeNixpkgs(t, dir, "hivepkgs")
	ownNixpkgs := fakeNixpkgs(t, dir, "ownpkgs")
	src := writeHive(t, fmt.Sprintf(`{
  paths.nixpkgs = %q;
  systems.a.modules = [ { label = "mods"; } ];
  systems.b = { configuration = { config, ... }: { label = "conf"; }; paths.nixpkgs = %q; };
  instances.x.system = "a";
  instances.y.system = "b";
}`, hiveNixpkgs, ownNixpkgs), n)
	ev := newEvaluator(t, src, nil)
	ctx := context.Background()
	inv, err := ev.Inventory(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if inv.Systems["b"].Paths["nixpkgs"] != ownNixpkgs || inv.Systems["a"].Paths["nixpkgs"] != hiveNixpkgs {
		t.Fatalf("effective paths: a=%v b=%v", inv.Systems["a"].Paths, inv.Systems["b"].Paths)
	}
	built, err := ev.Build(ctx, inv, []string{"a", "b"})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(built["a"].OutPath, "hivepkgs-mods-a") {
		t.Errorf("system a built from %s, want the hive's nixpkgs and its modules", built["a"].OutPath)
	}
	if !strings.Contains(built["b"].OutPath, "ownpkgs-conf-b") {
		t.Errorf("system b built from %s, want its own nixpkgs (system paths override hive paths)", built["b"].OutPath)
	}
}

func TestSignAndRoots(t *testing.T) {
	nixtest.Require(t)
	n := nonce(t)
	src := writeHive(t, `let ts = import @TS@; in { systems.a.toplevel = ts { name = "a"; version = "@NONCE@"; }; instances.x.system = "a"; }`, n)
	ev := newEvaluator(t, src, nil)
	ctx := context.Background()
	inv, err := ev.Inventory(ctx)
	if err != nil {
		t.Fatal(err)
	}
	built, err := ev.Build(ctx, inv, []string{"a"})
	if err != nil {
		t.Fatal(err)
	}
	keys := t.TempDir()
	sec, pub := filepath.Join(keys, "k.sec"), filepath.Join(keys, "k.pub")
	if _, err := ev.Nix.Run(ctx, "nix-store", "--generate-binary-cache-key", "test-"+n, sec, pub); err != nil {
		t.Fatal(err)
	}
	if err := ev.Sign(ctx, sec, []string{built["a"].OutPath}); err != nil {
		t.Fatal(err)
	}
	out, err := ev.Nix.Run(ctx, "nix", "path-info", "--sigs", built["a"].OutPath)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), "test-"+n+":") {
		t.Errorf("path not signed with the hive key: %s", out)
	}
	roots := filepath.Join(t.TempDir(), "gcroots")
	if err := ev.AddRoots(ctx, roots, built); err != nil {
		t.Fatal(err)
	}
	if target, err := os.Readlink(filepath.Join(roots, "a")); err != nil || target != built["a"].OutPath {
		t.Errorf("gc root a -> %q (%v), want %s", target, err, built["a"].OutPath)
	}
	out, err = ev.Nix.Run(ctx, "nix-store", "--gc", "--print-roots")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), filepath.Join(roots, "a")) {
		t.Errorf("nix does not know the gc root %s", filepath.Join(roots, "a"))
	}
	_ = runtime.GOOS
}

func TestPublicKeyFile(t *testing.T) {
	nixtest.Require(t)
	src := writeHive(t, `{ signing.publicKeyFile = ./k.pub; systems.a.toplevel = null; instances.x.system = "a"; }`, "")
	if err := os.WriteFile(filepath.Join(src.Dir, "k.pub"), []byte("hive-1:abc=\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	inv, err := newEvaluator(t, src, nil).Inventory(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if inv.Signing.PublicKey != "hive-1:abc=" {
		t.Errorf("public key = %q", inv.Signing.PublicKey)
	}
}

func TestStoreUserDefaultsToUser(t *testing.T) {
	nixtest.Require(t)
	src := writeHive(t, `{ systems.a.toplevel = null;
  instances.plain.system = "a";
  instances.deployer = { system = "a"; user = "ops"; };
  instances.served = { system = "a"; storeUser = "nix-ssh"; };
}`, "")
	inv, err := newEvaluator(t, src, nil).Inventory(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{"plain": "root", "deployer": "ops", "served": "nix-ssh"} {
		if got := inv.Instances[name].StoreUser; got != want {
			t.Errorf("%s: storeUser %q, want %q", name, got, want)
		}
	}
}

// Offline, Nix waits for unreachable substituters on every build; the
// first build of a run says which, once, and still builds. Nothing is
// said when everything is already built.
func TestWarnsOfUnreachableSubstituters(t *testing.T) {
	nixtest.Require(t)
	// A port nothing listens on: refused at once, as offline DNS or
	// routing failures are, soon.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := "http://" + l.Addr().String()
	l.Close()
	src := writeHive(t, fleetHive, nonce(t))
	var stderr bytes.Buffer
	ev := newEvaluator(t, src, &stderr)
	ev.Nix.Config = append(ev.Nix.Config, "substituters = "+dead)
	var warnings []string
	ev.Warn = func(m string) { warnings = append(warnings, m) }
	ctx := context.Background()
	inv, err := ev.Inventory(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, round := range []string{"first", "second"} {
		built, err := ev.Build(ctx, inv, []string{"web", "db"})
		if err != nil || !ev.Valid(ctx, built["web"].OutPath) {
			t.Fatalf("%s build: %v\n%s", round, err, stderr.String())
		}
	}
	if len(warnings) != 1 || !strings.Contains(warnings[0], "substituter "+dead+" is unreachable") || !strings.Contains(warnings[0], "substituters =") {
		t.Errorf("warnings = %q; want one naming %s and the fix", warnings, dead)
	}
	// A new run with everything built: nothing to warn about.
	warnings = nil
	ev2 := newEvaluator(t, src, &stderr)
	ev2.Nix.Config = append(ev2.Nix.Config, "substituters = "+dead)
	ev2.Warn = func(m string) { warnings = append(warnings, m) }
	if _, err := ev2.Build(ctx, inv, []string{"web", "db"}); err != nil {
		t.Fatal(err)
	}
	if len(warnings) != 0 {
		t.Errorf("warned with nothing to build: %q", warnings)
	}
}
