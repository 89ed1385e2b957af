package cli_test

import (
	"context"
	"os"
	"os/exec"
	"os/user"
	"strings"
	"testing"

	"github.com/nix-hive/nix-hive/internal/testenv"
)

// summaryLine finds the summary row of an instance.
func summaryLine(out, instance string) string {
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, instance+" ") {
			return l
		}
	}
	return ""
}

func TestDeployUntrustedKeyIsRefused(t *testing.T) {
	s := newSeedTrusting(t, map[string]bool{"www-2": true})
	// plan, and deploy --confirm before it asks, say so first: they ask
	// the hosts anyway, and read their nix.conf on the way.
	const untrusting = `warning: 1 consumer substitute from a store, and their nix.conf does not trust the hive's key`
	code, _, errOut := s.run("plan")
	if code != 0 || !strings.Contains(errOut, untrusting) || !strings.HasSuffix(strings.TrimSpace(errOut), ": www-2") {
		t.Errorf("plan: exit %d, does not warn that www-2 (alone) will refuse the closures:\n%s", code, errOut)
	}
	code, _, errOut = s.run("deploy", "--confirm", "portico", "*")
	if code == 0 || !strings.Contains(errOut, untrusting) || s.current("www-1") != "" {
		t.Errorf("deploy --confirm answered no: exit %d, or no warning before the question, or a host was touched:\n%s", code, errOut)
	}
	if _, _, errOut = s.run("deploy", "--confirm", "--trust-hive-key", "portico", "*"); strings.Contains(errOut, untrusting) {
		t.Errorf("deploy --confirm --trust-hive-key warns that consumers will refuse the key it gives them")
	}
	code, out, _ := s.run("deploy", "portico", "*")
	if code == 0 {
		t.Fatal("deploy succeeded although www-2 does not trust the hive key")
	}
	line := summaryLine(out, "www-2")
	if !strings.Contains(line, "failed") || !strings.Contains(line, "substitute") || !strings.Contains(line, "not signed by a key in the host's trusted-public-keys") {
		t.Errorf("www-2 summary should say failed at substitute (not signed by a trusted key): %q", line)
	}
	www := s.state().Systems["www"].OutPath
	if s.has("www-2", www) || s.current("www-2") == www {
		t.Errorf("www-2 accepted the path anyway")
	}
	for _, h := range []string{"portico", "storage", "www-1", "www-3"} {
		if l := summaryLine(out, h); !strings.Contains(l, " ok ") {
			t.Errorf("%s should have succeeded: %q", h, l)
		}
	}
	if got := s.current("www-1"); got != www {
		t.Errorf("www-1 not on %s: %s", www, got)
	}
	// --trust-hive-key brings such a host in.
	if code, _, _ := s.run("deploy", "--trust-hive-key", "www-2"); code != 0 {
		t.Errorf("deploy --trust-hive-key www-2 failed")
	}
	if got := s.current("www-2"); got != www {
		t.Errorf("www-2 not on %s after --trust-hive-key: %s", www, got)
	}
}
func TestDeployHostDownAndKilledThenResume(t *testing.T) {
	s := newSeed(t)
	// storage carries 48 MiB so that its push takes long enough to kill.
	s.edit(`storage.toplevel = testSystem { name = "storage"; };`, `storage.toplevel = testSystem { name = "storage"; payloadMiB = 48; };`)
	if code, _, _ := s.run("build"); code != 0 {
		t.Fatal("build failed")
	}
	// www-3 is down before the deploy; storage dies as its push starts.
	if err := s.lab.Host("www-3").Stop(); err != nil {
		t.Fatal(err)
	}
	r := startIn(t, s.dir, "--json", "deploy", "--no", "build")
	r.stdout.waitFor(t, `"instance":"storage","wave":1,"step":"push","status":"start"`, r.done)
	if err := s.lab.Host("storage").Stop(); err != nil {
		t.Fatal(err)
	}
	if code := r.wait(); code == 0 {
		t.Fatal("deploy with dead hosts exited 0")
	}
	results := reportOf(t, r.stdout.String()).Results
	if res := results["www-3"]; res.Status != "failed" {
		t.Errorf("www-3 (down) not reported failed: %+v", res)
	}
	if res := results["storage"]; res.Status != "failed" || res.Step != "push" {
		t.Errorf("storage (killed during push) not reported failed at push: %+v", res)
	}
	for _, h := range []string{"portico", "www-1", "www-2"} {
		if res := results[h]; res.Status != "ok" {
			t.Errorf("%s should have succeeded: %+v", h, res)
		}
	}
	st := s.state()
	if st.Instances["storage"].Status != "failed" || st.Instances["www-3"].Status != "failed" || st.Instances["www-1"].Status != "ok" {
		t.Errorf("hive.state: %+v", st.Instances)
	}
	before := len(s.activations("www-1"))

	// Resume: the hosts are back; only what was missing is done.
	ctx := context.Background()
	if err := s.lab.Host("www-3").Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.lab.Host("storage").Start(ctx); err != nil {
		t.Fatal(err)
	}
	code, out, _ := s.run("deploy", "--no", "build")
	if code != 0 {
		t.Fatalf("resume failed")
	}
	for h, want := range map[string]string{"storage": " ok ", "www-3": " ok ", "www-1": "unchanged", "www-2": "unchanged", "portico": "unchanged"} {
		if l := summaryLine(out, h); !strings.Contains(l, want) {
			t.Errorf("resume: %s should be %q: %q", h, want, l)
		}
	}
	if len(s.activations("www-1")) != before {
		t.Errorf("resume activated www-1 again")
	}
	if s.current("storage") != s.state().Systems["storage"].OutPath {
		t.Errorf("storage not on its system after resume")
	}
}
func TestDeployThroughBinaryCacheStore(t *testing.T) {
	s := newSeed(t)
	cache := t.TempDir()
	for _, h := range []string{"www-1", "www-2", "www-3"} {
		s.edit(`at "`+h+`" { system = "www"; host = "10.22.0.`, `at "`+h+`" { store = "file://`+cache+`"; system = "www"; host = "10.22.0.`)
	}
	s.edit(`store = "portico"; tags = [ "web" "canary" ];`, `tags = [ "web" "canary" ];`)
	s.edit(`jump = "portico"; store = "portico"; tags = [ "web" ]; };
    www-3`, `jump = "portico"; tags = [ "web" ]; };
    www-3`)
	s.edit(`jump = "portico"; store = "portico"; tags = [ "web" ]; };
  };`, `jump = "portico"; tags = [ "web" ]; };
  };`)
	code, out, _ := s.run("--json", "deploy", "www-*")
	if code != 0 {
		t.Fatalf("deploy through a binary cache failed")
	}
	pushes := map[string]int{}
	for _, e := range events(t, out) {
		if e.Type == "event" && e.Step == "push" && e.Status == "ok" {
			pushes[e.Instance]++
		}
	}
	if len(pushes) != 1 || pushes["file://"+cache] != 1 {
		t.Errorf("pushes = %v, want exactly one, to the cache", pushes)
	}
	www := s.state().Systems["www"].OutPath
	if _, err := os.Stat(cache + "/" + strings.TrimPrefix(www, "/nix/store/")[:32] + ".narinfo"); err != nil {
		t.Errorf("the cache has no narinfo for %s: %v", www, err)
	}
	for _, h := range []string{"www-1", "www-2", "www-3"} {
		if s.current(h) != www {
			t.Errorf("%s not on %s", h, www)
		}
	}
	if s.has("portico", www) {
		t.Errorf("portico received the www closure although it is no store any more")
	}
}

// An instance whose login is not root: nix copy writes its store through
// sudo, activation runs under sudo, status reads as the user.
func TestDeployAsNonRootUserWithSudo(t *testing.T) {
	const name = "nixhive-deployer"
	testenv.Tool(t, "sudo", "scripts/setup installs it")
	s := newSeed(t)
	if _, err := user.Lookup(name); err != nil {
		// password "*": no password login, but not "locked", which sshd
		// without PAM would refuse even for key logins.
		if out, err := exec.Command("useradd", "--no-create-home", "--shell", "/bin/sh", "--password", "*", name).CombinedOutput(); err != nil {
			t.Fatalf("useradd: %v\n%s", err, out)
		}
		t.Cleanup(func() { exec.Command("userdel", name).Run() })
	}
	sudoers := "/etc/sudoers.d/" + name
	if err := os.WriteFile(sudoers, []byte(name+" ALL=(ALL) NOPASSWD: ALL\n"), 0o440); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(sudoers) })
	// storage (pushed to directly) and www-1 (substituting) log in as the
	// user; the lab fragment says root, so let the instance's user win.
	s.edit(`at = name: attrs: attrs // (lab.${name} or { });`, `at = name: attrs: attrs // (lab.${name} or { }) // (if attrs ? user then { inherit (attrs) user; } else { });`)
	s.edit(`storage = at "storage" { system = "storage";`, `storage = at "storage" { user = "`+name+`"; system = "storage";`)
	s.edit(`www-1 = at "www-1" { system = "www";`, `www-1 = at "www-1" { user = "`+name+`"; system = "www";`)
	code, out, _ := s.run("deploy", "storage", "www-1")
	if code != 0 {
		t.Fatalf("deploy as %s failed:\n%s", name, out)
	}
	st := s.state()
	if s.current("storage") != st.Systems["storage"].OutPath || s.current("www-1") != st.Systems["www"].OutPath {
		t.Errorf("not activated: storage %s www-1 %s", s.current("storage"), s.current("www-1"))
	}
	if code, out, _ := s.run("run", "storage", "--", "id", "-un"); code != 0 || !strings.Contains(out, name) {
		t.Errorf("commands do not run as %s: %s", name, out)
	}
}
