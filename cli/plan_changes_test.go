package cli_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nix-hive/nix-hive/deploy"
	"github.com/nix-hive/nix-hive/internal/nixtest"
)

// plan says what a deploy would change on each host: a system that gains
// a 1 MiB package shows it and the size delta, an unchanged one says so,
// an unreachable host is named without hiding the rest, and a running
// system this machine no longer has is read from its host.
func TestPlanShowsChanges(t *testing.T) {
	f := newFaultLab(t, 4)
	// A system of app-4's own (the others share theirs), to be deleted
	// from this machine's store below.
	f.variants(map[string]string{"app-4": `version = "1b";`})
	v1 := f.baseline()
	f.variants(map[string]string{
		"app-1": `packages = [ { name = "blob"; version = "1.0"; sizeKiB = 1024; } ];`,
		"app-4": `version = "2";`,
	})
	v2 := f.build()
	if v2["app-2"] != v1["app-2"] || v2["app-1"] == v1["app-1"] {
		t.Fatalf("variants did not build as meant: %v then %v", v1, v2)
	}
	// app-4's running system leaves this machine's store: only app-4
	// can say what is in it.
	if out, err := exec.Command("nix-store", "--delete", v1["app-4"]).CombinedOutput(); err != nil {
		t.Fatalf("nix-store --delete %s: %v\n%s", v1["app-4"], err, out)
	}
	if err := f.lab.Host("app-3").Stop(); err != nil {
		t.Fatal(err)
	}

	// app-3 could not be asked: the plan is printed, and the exit status
	// says a host failed, naming it.
	code, out, errOut := f.run("plan", "--connect-timeout", faultConnect)
	if code != 1 || !strings.Contains(errOut, "could not ask app-3 what it runs") {
		t.Fatalf("plan with app-3 down: exit %d, want 1 naming app-3", code)
	}
	for _, want := range []string{
		`(?m)^changes \(against what the hosts run now\):$`,
		`(?m)^  app-1: 1 host\n    1 host run ` + regexp.QuoteMeta(v1["app-1"]) + ` \(app-1\):\n      blob: ∅ → 1\.0, \+1\.0 MiB\n      closure: 1 → 2 paths, [0-9.]+ KiB → 1\.0 MiB \(\+1\.0 MiB\); 1 package rebuilt with the same version\n`,
		`(?m)^  app-2: 1 host, 1 unchanged \(app-2\)$`,
		`(?m)^  app-3: 1 host, 1 not known$`,
		`(?m)^  not known: app-3: .*(refused|connect)`,
		`(?m)^  app-4: 1 host\n    1 host run ` + regexp.QuoteMeta(v1["app-4"]) + ` \(app-4\):\n      nixos-system-app: 1b → 2\n`,
		`(?m)^  changes: 2 to change, 1 unchanged, 1 not known$`,
		`(?m)^  leaving this host: `, // the rest of the plan printed
	} {
		if !regexp.MustCompile(want).MatchString(out) {
			t.Errorf("plan lacks %s", want)
		}
	}

	code, out, _ = f.run("plan", "--json", "--connect-timeout", faultConnect)
	var doc struct {
		Changes struct {
			Offline bool                  `json:"offline"`
			Systems []deploy.SystemChange `json:"systems"`
		} `json:"changes"`
	}
	if err := json.Unmarshal([]byte(out), &doc); code != 1 || err != nil {
		t.Fatalf("plan --json: exit %d, %v", code, err)
	}
	bySystem := map[string]deploy.SystemChange{}
	for _, s := range doc.Changes.Systems {
		bySystem[s.System] = s
	}
	if a := bySystem["app-1"]; len(a.From) != 1 || a.From[0].Diff == nil || a.From[0].Diff.SizeDelta() < 1<<20 ||
		len(a.From[0].Diff.Packages) != 1 || a.From[0].Diff.Packages[0].Name != "blob" {
		t.Errorf("plan --json app-1: %+v", a)
	}
	if a := bySystem["app-2"]; len(a.Unchanged) != 1 || len(a.From) != 0 {
		t.Errorf("plan --json app-2: %+v", a)
	}
	if a := bySystem["app-3"]; a.Unknown["app-3"] == "" {
		t.Errorf("plan --json app-3: %+v", a)
	}

	// Offline: hive.state says app-3 runs v1; app-4's old system is
	// nowhere to be read.
	code, out, _ = f.run("plan", "--offline")
	if code != 0 {
		t.Fatalf("plan --offline exit %d", code)
	}
	for _, want := range []string{
		`(?m)^changes \(against hive.state; no host asked\):$`,
		`(?m)^  app-3: 1 host, 1 unchanged \(app-3\)$`,
		`(?m)^      no closure diff: the running system is not in this machine's store`,
		`(?m)^      blob: ∅ → 1\.0, \+1\.0 MiB$`,
	} {
		if !regexp.MustCompile(want).MatchString(out) {
			t.Errorf("plan --offline lacks %s", want)
		}
	}

	// Planning changed no host.
	for _, h := range []string{"app-1", "app-2", "app-4"} {
		if got := f.system(h); got.active != v1[h] || got.profile != v1[h] {
			t.Errorf("%s changed by plan: %+v", h, got)
		}
	}
	// A plan that cannot diff says how to get one.
	os.RemoveAll(filepath.Join(f.dir, ".nix-hive", "gcroots"))
	// A version no earlier run built into this machine's shared store.
	f.variants(map[string]string{"app-2": fmt.Sprintf(`version = "3n%d";`, time.Now().UnixNano())})
	_, out, _ = f.run("plan", "--offline", "app-2")
	if !strings.Contains(out, "no closure diff: the wanted system is not built on this machine: build it (nix-hive build, or plan --build)") {
		t.Errorf("an unbuilt system's plan does not say how to see its changes")
	}
	if code, out, _ := f.run("plan", "--offline", "--build", "app-2"); code != 0 || !strings.Contains(out, "nixos-system-app: 1 → 3n") {
		t.Errorf("plan --build: exit %d, no diff", code)
	}
}

// A plan of systems not built here asks no binary cache about them: on a
// machine without a network, the default cache.nixos.org stalled every
// plan for seconds. A cache that counts what it is asked stands in for it.
func TestPlanAsksNoCache(t *testing.T) {
	nixtest.Require(t)
	var asked atomic.Int64
	cache := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		asked.Add(1)
		http.NotFound(w, r)
	}))
	defer cache.Close()
	t.Setenv("NIX_CONFIG", nixtest.Config+"\nsubstituters = "+cache.URL+"\n")
	root, _ := filepath.Abs("..")
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "hive.nix"), fmt.Sprintf(`{
  systems.www.toplevel = import %q { name = "www"; version = "%d"; };
  instances.www-1 = { system = "www"; host = "127.77.0.1"; };
}`, filepath.Join(root, "examples", "testsystems"), time.Now().UnixNano()))
	if code, out, _ := runIn(t, dir, "plan", "--offline"); code != 0 || !strings.Contains(out, "not built on this machine") {
		t.Fatalf("plan --offline: exit %d", code)
	}
	if n := asked.Load(); n != 0 {
		t.Errorf("plan asked the binary cache %d times about systems it has not built", n)
	}
}
