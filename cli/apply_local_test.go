package cli_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nix-hive/nix-hive/internal/nixtest"
	"github.com/nix-hive/nix-hive/state"
)

// apply-local, run on a lab host (the nix-hive binary inside the host's
// namespaces, no SSH), builds that host's system in its own store and
// switches it; a failing post-check rolls it back, as a deploy would.
func TestApplyLocalOnLabHost(t *testing.T) {
	policy := `
on_failure = "rollback"

def post_activate(ctx):
    r = ctx.run("cat /run/health 2>/dev/null || echo ok")
    if r.stdout.strip() != "ok":
        fail("health: " + r.stdout.strip())
`
	f := newPolicyFleet(t, 2, policy, "{ }")
	if code, _, _ := f.run("deploy"); code != 0 {
		t.Fatal("first deploy failed")
	}
	v1 := f.current("app-1")
	bin, err := exec.LookPath("nix-hive") // this test binary (TestMain)
	if err != nil {
		t.Fatal(err)
	}
	h := f.lab.Host("app-1")
	applyLocal := func(args ...string) (string, error) {
		t.Helper()
		argv := append([]string{"env", "NIX_CONFIG=" + nixtest.Config, bin, "-c", f.dir, "apply-local"}, args...)
		out, err := h.Exec(context.Background(), argv...)
		t.Logf("on app-1: nix-hive apply-local %s: %v\n%s", strings.Join(args, " "), err, out)
		return string(out), err
	}

	// Found by its hostname; built in app-1's own store.
	f.setVersion("2")
	out, err := applyLocal()
	if err != nil {
		t.Fatalf("apply-local failed: %v", err)
	}
	// Magic rollback armed and confirmed, here from a new process.
	if !strings.Contains(out, "confirm ok: confirmed from a new process") || !strings.Contains(out, "built on this machine, the host") {
		t.Errorf("apply-local did not confirm the activation as a deploy does")
	}
	v2 := f.current("app-1")
	if v2 == v1 || !strings.HasSuffix(v2, "-nixos-system-app-2") {
		t.Fatalf("app-1 runs %s after apply-local, want version 2", v2)
	}
	if link, _ := os.Readlink(h.Path("/nix/var/nix/profiles/system")); link != "system-2-link" {
		t.Errorf("app-1's profile is at %s, want generation 2", link)
	}
	if got := f.current("app-2"); got != v1 {
		t.Errorf("apply-local on app-1 changed app-2: %s", got)
	}
	st, err := state.Load(filepath.Join(f.dir, "hive.state"))
	if err != nil {
		t.Fatal(err)
	}
	if st := st.Instances["app-1"]; st.Status != "ok" || st.OutPath != v2 {
		t.Errorf("hive.state for app-1: %+v", st)
	}

	// A failing post-check returns it to version 2.
	f.setVersion("3")
	if err := os.WriteFile(h.Path("/run/health"), []byte("sick\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err = applyLocal("--instance", "app-1")
	if err == nil {
		t.Fatal("apply-local with a failing post-check exited 0")
	}
	if !strings.Contains(out, "rolled-back") || !strings.Contains(out, "health: sick") {
		t.Errorf("the summary does not say app-1 was rolled back for its check")
	}
	if got := f.current("app-1"); got != v2 {
		t.Errorf("app-1 runs %s after the rollback, want %s", got, v2)
	}
	acts, _ := os.ReadFile(h.Path("/run/nix-hive-test/activations"))
	if !strings.Contains(string(acts), "nixos-system-app-3 switch") {
		t.Errorf("version 3 was never activated:\n%s", acts)
	}

	// Not this machine's instance, and not root: clear errors.
	if out, err := applyLocal("--instance", "app-9"); err == nil || !strings.Contains(out, "app-9") {
		t.Errorf("an unknown --instance: %v", err)
	}
}
