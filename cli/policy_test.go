package cli_test

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// newPolicyFleet: a lab of n hosts app-1..app-n running system "app", with
// a hive key every host trusts, and policy as hive.star. extra is Nix
// merged into the instances (e.g. to tag a canary).
func newPolicyFleet(t *testing.T, n int, policy, extra string) *fleet {
	l := appLab(t, n)
	root, _ := filepath.Abs("..")
	dir := t.TempDir()
	write := func(name, text string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("lab.nix", l.HiveNix())
	write("hive.nix", fmt.Sprintf(`let
  lab = import ./lab.nix;
  ts = import %q;
  version = builtins.readFile ./version;
in {
  signing.keyFile = "keys/hive.sec";
  systems.app.toplevel = ts { name = "app"; inherit version; };
  instances = builtins.mapAttrs (n: v: v // { system = "app"; tags = [ "app" ]; }) lab // %s;
}`, filepath.Join(root, "examples", "testsystems"), extra))
	write("version", "1")
	write("hive.star", policy)
	f := &fleet{t: t, lab: l, dir: dir}
	keygenTrusted(t, f.run, l, nil)
	return f
}

func (f *fleet) setVersion(v string) {
	if err := os.WriteFile(filepath.Join(f.dir, "version"), []byte(v), 0o644); err != nil {
		f.t.Fatal(err)
	}
}

// activationTimes returns when each host was last activated (from the test
// system's own log on the host).
func (f *fleet) activationTimes() map[string]float64 {
	out := map[string]float64{}
	for _, h := range f.lab.Hosts {
		file, err := os.Open(h.Path("/run/nix-hive-test/activations"))
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(file)
		for sc.Scan() {
			if fields := strings.Fields(sc.Text()); len(fields) > 0 {
				ts, _ := strconv.ParseFloat(fields[0], 64)
				out[h.Name] = ts
			}
		}
		file.Close()
	}
	return out
}

func (f *fleet) current(h string) string {
	p, _ := os.Readlink(f.lab.Host(h).Path("/run/current-system"))
	return p
}

const canaryPolicy = `
on_failure = "stop"

def waves(instances):
    first = canaries(instances, 1)
    rest = [i for i in instances if i not in first]
    return [first] + batches(rest, 5)

def post_activate(ctx):
    # a real command on the host: its output and exit status reach the policy
    r = ctx.run("readlink /run/current-system; exit 3")
    if r.code != 3 or "nixos-system-app-" not in r.stdout:
        fail("ctx.run returned code %d stdout %r" % (r.code, r.stdout))
    if ctx.instance.meta.get("fail"):
        fail("%s is marked to fail" % ctx.instance.name)
    log("%s healthy on %s" % (ctx.instance.name, r.stdout.strip()))
`

func TestPolicyCanaryThenBatches(t *testing.T) {
	f := newPolicyFleet(t, 16, canaryPolicy, `{ app-7 = (import ./lab.nix).app-7 // { system = "app"; tags = [ "app" "canary" ]; }; }`)
	// plan shows the waves without running a check or touching a host
	code, out, _ := f.run("plan")
	if code != 0 {
		t.Fatal("plan failed")
	}
	if !strings.Contains(out, "1: app-7\n") || !strings.Contains(out, "2: app-1 app-2 app-3 app-4 app-5\n") || !strings.Contains(out, "4: app-12 app-13 app-14 app-15 app-16\n") {
		t.Errorf("plan waves:\n%s", out)
	}
	if len(f.activationTimes()) != 0 {
		t.Fatal("plan activated something")
	}
	code, out, errOut := f.run("deploy")
	if code != 0 {
		t.Fatalf("deploy failed")
	}
	times := f.activationTimes()
	if len(times) != 16 {
		t.Fatalf("activated %d hosts, want 16", len(times))
	}
	waves := [][]string{{"app-7"}, {"app-1", "app-2", "app-3", "app-4", "app-5"}, {"app-6", "app-8", "app-9", "app-10", "app-11"}, {"app-12", "app-13", "app-14", "app-15", "app-16"}}
	for i := 1; i < len(waves); i++ {
		for _, before := range waves[i-1] {
			for _, after := range waves[i] {
				if times[before] >= times[after] {
					t.Errorf("%s (wave %d) activated at %.3f, not before %s (wave %d) at %.3f", before, i, times[before], after, i+1, times[after])
				}
			}
		}
	}
	if !strings.Contains(errOut, "app-7: app-7 healthy on /nix/store/") {
		t.Errorf("policy log missing:\n%s", errOut)
	}
	if !strings.Contains(out, "post: ok") {
		t.Errorf("summary lacks check results:\n%s", out)
	}

	// A failing canary stops everything after it.
	f.setVersion("2")
	editFile(t, filepath.Join(f.dir, "hive.nix"), `tags = [ "app" "canary" ];`, `tags = [ "app" "canary" ]; meta.fail = true;`)
	code, out, _ = f.run("deploy")
	if code == 0 {
		t.Fatal("deploy with a failing canary exited 0")
	}
	if !strings.Contains(out, "rollout stopped") {
		t.Errorf("summary does not say the rollout stopped:\n%s", out)
	}
	if l := summaryLine(out, "app-7"); !strings.Contains(l, "failed") || !strings.Contains(l, "marked to fail") {
		t.Errorf("canary row: %q", l)
	}
	after := f.activationTimes()
	for _, h := range []string{"app-1", "app-12", "app-16"} {
		if after[h] != times[h] {
			t.Errorf("%s was activated after the canary failed", h)
		}
		if l := summaryLine(out, h); !strings.Contains(l, "not-started") {
			t.Errorf("%s row: %q", h, l)
		}
	}
}

func readFile(t *testing.T, p string) string {
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestPolicyRollbackOnFailedPostCheck(t *testing.T) {
	policy := `
on_failure = "rollback"
max_failures = 5

def post_activate(ctx):
    if ctx.instance.meta.get("fail"):
        fail("health check failed on %s" % ctx.instance.name)
`
	f := newPolicyFleet(t, 4, policy, "{ }")
	if code, _, _ := f.run("deploy"); code != 0 {
		t.Fatal("first deploy failed")
	}
	v1 := f.current("app-2")
	f.setVersion("2")
	editFile(t, filepath.Join(f.dir, "hive.nix"), "// { };", `// { app-2 = (import ./lab.nix).app-2 // { system = "app"; meta.fail = true; }; };`)
	code, out, errOut := f.run("deploy")
	if code == 0 {
		t.Fatal("deploy with a failing post-check exited 0")
	}
	if l := summaryLine(out, "app-2"); !strings.Contains(l, "rolled-back") || !strings.Contains(l, "health check failed") {
		t.Errorf("app-2 row: %q", l)
	}
	if got := f.current("app-2"); got != v1 {
		t.Errorf("app-2 runs %s after rollback, want its previous system %s", got, v1)
	}
	for _, h := range []string{"app-1", "app-3", "app-4"} {
		if got := f.current(h); got == v1 || !strings.Contains(got, "nixos-system-app-2") {
			t.Errorf("%s runs %s, want the new system", h, got)
		}
	}
	if !strings.Contains(errOut, "deploy failed on 1 of 4 hosts") {
		t.Errorf("final error: %s", errOut)
	}
}

func TestPolicyErrorsTouchNoHost(t *testing.T) {
	f := newPolicyFleet(t, 2, "", "{ }")
	tests := []struct{ name, policy, want string }{
		{"syntax", "def waves(instances)\n    return []\n", "hive.star:2:1: got newline, want ':'"},
		{"endless loop", "def waves(instances):\n    while True:\n        pass\n", "hive.star:1:1: waves(): policy exceeded"},
		// One step asking for 320 MiB of bytes: a doubling loop would take
		// seconds to pass the limit on a loaded machine and could meet the
		// time limit first (the starlark tests cover both), and so could a
		// list of 2^25 values, whose filling the garbage collector scans
		// (it did, under the race detector).
		{"memory", "def waves(instances):\n    s = \"x\" * (320 << 20)\n    return [instances]\n", "waves(): policy exceeded 256 MiB (the memory limit)"},
		{"waves not a list", "def waves(instances):\n    return 3\n", "hive.star:1:1: waves(): returned int"},
		{"unknown builtin", "def pre_activate(ctx):\n    open(\"/etc/passwd\")\n", "hive.star:2:5: undefined: open"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			writeFile(t, filepath.Join(f.dir, "hive.star"), tt.policy)
			for _, cmd := range []string{"plan", "deploy"} {
				code, _, errOut := f.run(cmd)
				if code == 0 || !strings.Contains(errOut, tt.want) {
					t.Errorf("%s: exit %d, want an error at %s:\n%s", cmd, code, tt.want, errOut)
				}
			}
			if n := len(f.activationTimes()); n != 0 {
				t.Errorf("%d hosts were activated", n)
			}
			for _, h := range f.lab.Hosts {
				if ents, _ := os.ReadDir(h.Path("/nix/store")); len(ents) != 0 {
					t.Errorf("%s received store paths", h.Name)
				}
			}
		})
	}
}

// testFaultPolicyMemory: a post_activate that passes the
// policy memory limit fails its host, which follows on_failure (here back
// to what it ran), and stops the rollout whatever max_failures allows:
// no host starts after it.
func testFaultPolicyMemory(t *testing.T) {
	f := newPolicyFleet(t, 3, "", "{ }")
	if code, _, _ := f.run("deploy"); code != 0 {
		t.Fatal("first deploy failed")
	}
	v1 := f.current("app-1")
	f.setVersion("2")
	writeFile(t, filepath.Join(f.dir, "hive.star"), `
on_failure = "rollback"
max_failures = 5

def post_activate(ctx):
    if ctx.instance.name == "app-1":
        l = [0]
        while True:
            l = l + l
`)
	code, out, errOut := f.run("deploy", "--parallel", "1")
	if code == 0 {
		t.Fatal("deploy with a policy past its memory limit exited 0")
	}
	if l := summaryLine(out, "app-1"); !strings.Contains(l, "rolled-back") || !strings.Contains(l, "post_activate(): policy exceeded 256 MiB (the memory limit)") {
		t.Errorf("app-1 row: %q\n%s", l, errOut)
	}
	if !strings.Contains(out, "rollout stopped") {
		t.Errorf("summary does not say the rollout stopped:\n%s", out)
	}
	for _, h := range []string{"app-1", "app-2", "app-3"} {
		if got := f.current(h); got != v1 {
			t.Errorf("%s runs %s, want %s (rolled back, or never started)", h, got, v1)
		}
	}
	for _, h := range []string{"app-2", "app-3"} {
		if l := summaryLine(out, h); !strings.Contains(l, "not-started") {
			t.Errorf("%s row: %q", h, l)
		}
	}
	addFaultRow(faultRow{fault: "a policy past its memory limit in post_activate", exit: code, outcome: "rolled back, rollout stopped",
		hosts: "all on v1", badExit: code == 0})
}

func TestPolicySelectNarrows(t *testing.T) {
	policy := `
def select(instances):
    return [i for i in instances if i.name in ("app-2", "app-3")]
`
	f := newPolicyFleet(t, 4, policy, "{ }")
	code, out, _ := f.run("deploy")
	if code != 0 {
		t.Fatal("deploy failed")
	}
	got := []string{}
	for h := range f.activationTimes() {
		got = append(got, h)
	}
	sort.Strings(got)
	if strings.Join(got, " ") != "app-2 app-3" {
		t.Errorf("activated %v, want app-2 app-3", got)
	}
	if summaryLine(out, "app-1") != "" {
		t.Errorf("app-1 in the summary although select() dropped it:\n%s", out)
	}
}

func TestDeployToOddlyNamedInstance(t *testing.T) {
	f := newPolicyFleet(t, 1, "", fmt.Sprintf(`{ %q = (import ./lab.nix).app-1 // { system = "app"; }; }`, oddName))
	code, out, _ := f.run("deploy", oddName)
	if code != 0 {
		t.Fatalf("deploy to %q failed", oddName)
	}
	if !strings.Contains(out, oddName+"  1") || f.current("app-1") == "" {
		t.Errorf("summary or host state wrong:\n%s", out)
	}
	for _, p := range []string{f.lab.Hosts[0].Path("/root/pwned-by-name"), "pwned-by-name"} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("%s exists: the instance name was executed", p)
		}
	}
}

// Instance names may hold '/' (a rack, a region): '*' and other globs
// match across it for run, deploy and status alike, so '*' never silently
// leaves such instances out.
func TestStarMatchesNamesWithSlash(t *testing.T) {
	f := newPolicyFleet(t, 2, "", "{ }")
	editFile(t, filepath.Join(f.dir, "hive.nix"), "}) lab // { };", `}) { inherit (lab) app-1; "rack-1/app" = lab.app-2; };`)
	code, out, _ := f.run("run", "*", "--", "hostname")
	if code != 0 || !strings.Contains(out, "rack-1/app") || !strings.Contains(out, "app-2") || !strings.Contains(out, "app-1") {
		t.Errorf("run '*': exit %d, want both instances, rack-1/app on host app-2:\n%s", code, out)
	}
	code, out, _ = f.run("deploy", "*")
	if code != 0 {
		t.Fatalf("deploy '*' exited %d", code)
	}
	summaryHas(t, out, "rack-1/app", " ok ")
	summaryHas(t, out, "app-1", " ok ")
	if f.current("app-2") == "" || f.current("app-1") == "" {
		t.Errorf("not every host was deployed: app-1 %q, app-2 %q", f.current("app-1"), f.current("app-2"))
	}
	code, out, _ = f.run("status", "rack*")
	if code != 0 || !strings.Contains(out, "rack-1/app") || regexp.MustCompile(`(?m)^app-1\s`).MatchString(out) {
		t.Errorf("status 'rack*': exit %d, want rack-1/app only:\n%s", code, out)
	}
}
