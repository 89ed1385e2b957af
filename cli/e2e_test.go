package cli_test

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/nix-hive/nix-hive/cli"
	"github.com/nix-hive/nix-hive/internal/nixtest"
	"github.com/nix-hive/nix-hive/lab"
	"github.com/nix-hive/nix-hive/lab/labtest"
	"github.com/nix-hive/nix-hive/state"
)

// seed is the seed example deployed onto a lab: portico is the jump host
// and store of www-1..3 (reachable only through it), storage stands alone.
type seed struct {
	t   *testing.T
	lab *lab.Lab
	dir string // the hive directory
	pub string // the hive's public key
}

func copyTree(t *testing.T, src, dst string) {
	t.Helper()
	if out, err := exec.Command("cp", "-r", src, dst).CombinedOutput(); err != nil {
		t.Fatalf("cp -r %s %s: %v\n%s", src, dst, err, out)
	}
}

func newSeed(t *testing.T) *seed { return newSeedTrusting(t, nil) }

// newSeedTrusting starts the seed lab; hosts named in untrusting do not
// trust the hive key.
func newSeedTrusting(t *testing.T, untrusting map[string]bool) *seed {
	nixtest.Require(t)
	l := labtest.New(t, lab.Config{Hosts: 1, Names: []string{"storage"}, Internal: 3, JumpName: "portico",
		InternalNames: []string{"www-1", "www-2", "www-3"}})
	root, _ := filepath.Abs("..")
	work := t.TempDir()
	copyTree(t, filepath.Join(root, "examples"), filepath.Join(work, "examples"))
	dir := filepath.Join(work, "examples", "seed")
	if err := os.WriteFile(filepath.Join(dir, "lab.nix"), []byte(l.HiveNix()), 0o644); err != nil {
		t.Fatal(err)
	}
	s := &seed{t: t, lab: l, dir: dir}
	s.pub = keygenTrusted(t, s.run, l, untrusting)
	return s
}

// edit rewrites the seed hive.nix.
func (s *seed) edit(old, new string) {
	s.t.Helper()
	editFile(s.t, filepath.Join(s.dir, "hive.nix"), old, new)
}

// run runs nix-hive in-process against the seed hive.
func (s *seed) run(args ...string) (code int, stdout, stderr string) {
	s.t.Helper()
	var o, e bytes.Buffer
	code = cli.Main("test", append([]string{"-c", s.dir}, args...), &o, &e)
	s.t.Logf("nix-hive %s: exit %d\n--- stdout\n%s--- stderr\n%s", strings.Join(args, " "), code, o.String(), e.String())
	return code, o.String(), e.String()
}

func (s *seed) state() *state.File {
	st, err := state.Load(filepath.Join(s.dir, "hive.state"))
	if err != nil {
		s.t.Fatal(err)
	}
	return st
}

// current is where /run/current-system points on host h.
func (s *seed) current(h string) string {
	p, _ := os.Readlink(s.lab.Host(h).Path("/run/current-system"))
	return p
}

func (s *seed) has(h, storePath string) bool {
	_, err := os.Stat(s.lab.Host(h).Path(storePath))
	return err == nil
}

func (s *seed) activations(h string) []string {
	b, _ := os.ReadFile(s.lab.Host(h).Path("/run/nix-hive-test/activations"))
	return strings.Fields(strings.TrimSpace(string(b)))
}

type event struct {
	Type     string `json:"type"`
	Instance string `json:"instance"`
	Step     string `json:"step"`
	Status   string `json:"status"`
	Message  string `json:"message"`
	Results  map[string]struct {
		Status string `json:"status"`
		Step   string `json:"step"`
		Error  string `json:"error"`
	} `json:"results"`
}

func events(t *testing.T, out string) []event {
	var evs []event
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var e event
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("not a JSON event: %q: %v", line, err)
		}
		evs = append(evs, e)
	}
	return evs
}

func TestDeploySeed(t *testing.T) {
	s := newSeed(t)
	code, out, _ := s.run("--json", "deploy", "portico", "*")
	if code != 0 {
		t.Fatalf("deploy exit %d", code)
	}
	st := s.state()
	www, portico, storage := st.Systems["www"].OutPath, st.Systems["portico"].OutPath, st.Systems["storage"].OutPath
	if www == "" || portico == "" || storage == "" {
		t.Fatalf("systems not recorded in hive.state: %+v", st.Systems)
	}
	// portico holds both systems' closures; www hosts received theirs by
	// substitution from portico, never from this host.
	if !s.has("portico", www) || !s.has("portico", portico) {
		t.Errorf("portico lacks a closure: www %v portico %v", s.has("portico", www), s.has("portico", portico))
	}
	pushes := map[string]bool{}
	substituted := map[string]string{}
	for _, e := range events(t, out) {
		if e.Type == "event" && e.Step == "push" && e.Status == "ok" {
			pushes[e.Instance] = true
		}
		if e.Type == "event" && e.Step == "substitute" && e.Status == "start" {
			substituted[e.Instance] = e.Message
		}
	}
	if len(pushes) != 2 || !pushes["portico"] || !pushes["storage"] {
		t.Errorf("nix copy destinations from the deploy host = %v, want exactly portico and storage", pushes)
	}
	for _, h := range []string{"www-1", "www-2", "www-3"} {
		if !strings.Contains(substituted[h], s.lab.Host("portico").Addr) {
			t.Errorf("%s substitution: %q, want from portico", h, substituted[h])
		}
		if got := s.current(h); got != www {
			t.Errorf("%s: /run/current-system = %q, want %s", h, got, www)
		}
		// The path arrived signed by the hive key (and was checked against it).
		sig, err := s.lab.Host(h).Exec(t.Context(), "nix", "--extra-experimental-features", "nix-command", "path-info", "--sigs", www)
		if err != nil || !strings.Contains(string(sig), strings.Split(s.pub, ":")[0]+":") {
			t.Errorf("%s: %s not signed by the hive key: %s %v", h, www, sig, err)
		}
	}
	if got := s.current("portico"); got != portico {
		t.Errorf("portico: /run/current-system = %q, want %s", got, portico)
	}
	if got := s.current("storage"); got != storage {
		t.Errorf("storage: /run/current-system = %q, want %s", got, storage)
	}
	if len(s.activations("www-1")) != 3 { // time, path, goal
		t.Errorf("www-1 activations: %v", s.activations("www-1"))
	}
	for _, h := range []string{"portico", "www-1", "storage"} {
		if in, ok := st.Instances[h]; !ok || in.Status != "ok" {
			t.Errorf("hive.state for %s: %+v", h, in)
		}
	}

	// A second deploy changes nothing on the hosts, copies nothing (the
	// store portico's consumers run their systems: they need nothing from
	// it) and says nothing but the summary's line per host.
	code, out, errOut := s.run("deploy", "portico", "*")
	if code != 0 {
		t.Fatalf("second deploy exit %d", code)
	}
	if strings.Count(out, "unchanged") != 5 {
		t.Errorf("second deploy should leave all 5 hosts unchanged:\n%s", out)
	}
	var logLines []string
	for _, l := range strings.Split(strings.TrimSpace(errOut), "\n") {
		if l != "" {
			logLines = append(logLines, l)
		}
	}
	if len(logLines) > 0 {
		t.Errorf("a no-op deploy should log nothing, got:\n%s", errOut)
	}
	if len(s.activations("www-1")) != 3 {
		t.Errorf("www-1 activated again: %v", s.activations("www-1"))
	}

	// status agrees, in text and JSON.
	code, out, _ = s.run("status")
	if code != 0 || strings.Count(out, " ok\n") != 5 {
		t.Errorf("status exit %d:\n%s", code, out)
	}

	// A consumer's deploy sends portico, its store, a new closure: the
	// store's own record (its system, ok) stays, and what it received is
	// recorded beside it; plan --offline still knows what portico runs.
	s.edit(`toplevel = testSystem { name = "www"; };`, `toplevel = testSystem { name = "www"; version = "2"; };`)
	if code, _, _ := s.run("deploy", "www-1"); code != 0 {
		t.Fatalf("deploy www-1 exit %d", code)
	}
	st = s.state()
	www2 := st.Systems["www"].OutPath
	rec := st.Instances["portico"]
	if (rec.Status != "ok" && rec.Status != "unchanged") || rec.OutPath != portico || rec.Goal != "switch" || rec.Stored == nil || !slices.Contains(rec.Stored.Paths, www2) {
		t.Errorf("hive.state for portico after deploying its consumer: %+v (stored %+v); want its own record (ok or unchanged) of %s, and %s stored", rec, rec.Stored, portico, www2)
	}
	if !s.has("portico", www2) || s.current("www-1") != www2 {
		t.Errorf("portico holds %s: %v; www-1 runs %s", www2, s.has("portico", www2), s.current("www-1"))
	}
	code, out, _ = s.run("plan", "--offline", "portico")
	if code != 0 || !strings.Contains(out, "unchanged") || strings.Contains(out, "unknown") {
		t.Errorf("plan --offline portico: exit %d, want it unchanged:\n%s", code, out)
	}
}

// nix copy's pushes ride the deploy's own connections (mux.Relay): the
// OpenSSH client is never run on this machine, so a store costs the
// deploy host no third login, and its pinned key and jump chain are the
// pool's. An ssh that refuses to run stands first on PATH to prove it.
func TestDeployPushesOverItsOwnConnection(t *testing.T) {
	s := newSeed(t)
	trap := t.TempDir()
	ran := filepath.Join(trap, "ran")
	script := "#!/bin/sh\necho \"$*\" >>" + ran + "\nexit 255\n"
	if err := os.WriteFile(filepath.Join(trap, "ssh"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", trap+string(os.PathListSeparator)+os.Getenv("PATH"))
	code, _, _ := s.run("deploy", "portico", "*")
	if code != 0 {
		t.Fatalf("deploy exit %d", code)
	}
	if b, err := os.ReadFile(ran); err == nil {
		t.Errorf("the deploy ran OpenSSH's ssh:\n%s", b)
	}
	st := s.state()
	for h, sys := range map[string]string{"portico": "portico", "storage": "storage", "www-1": "www", "www-2": "www", "www-3": "www"} {
		if got, want := s.current(h), st.Systems[sys].OutPath; want == "" || got != want {
			t.Errorf("%s: /run/current-system = %q, want %s", h, got, want)
		}
	}
	if www := st.Systems["www"].OutPath; !s.has("portico", www) {
		t.Errorf("the store portico lacks %s", www)
	}
}
