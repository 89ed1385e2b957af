package cli_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nix-hive/nix-hive/host"
)

// A root login's first deploy installs nix-hive's agent on the host, once;
// later deploys and rollbacks run its operations instead of sending their
// programs, the substitution, the keys' owners question and the job's
// start inside the deploy lock's session. The test marks the installed
// agent so that it logs each operation it runs, and its stdin: /dev/null
// when the lock's session ran it, the SSH channel when it had a session
// of its own. A later deploy that reinstalled the agent, or sent
// programs instead, would leave no log.
func TestRootLoginRunsTheInstalledAgent(t *testing.T) {
	s := newSeed(t)
	if code, _, _ := s.run("deploy", "www-1"); code != 0 {
		t.Fatalf("first deploy: exit %d", code)
	}
	h := s.lab.Host("www-1")
	agent := h.Path(host.RootAgentPath())
	b, err := os.ReadFile(agent)
	if err != nil || string(b) != host.AgentScript() {
		t.Fatalf("www-1 has no agent at %s, or another one (%d bytes, want %d): %v", host.RootAgentPath(), len(b), len(host.AgentScript()), err)
	}
	for _, p := range []string{agent, filepath.Dir(agent)} {
		if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != 0o700 {
			t.Errorf("%s: mode %v, want 0700 (root's alone): %v", p, fi.Mode().Perm(), err)
		}
	}
	ops := h.Path("/run/nix-hive-test/agent-ops")
	marked := strings.Replace(string(b), "\n", "\nprintf '%s:%s\\n' \"${1-}\" \"$(readlink /proc/$$/fd/0)\" >>/run/nix-hive-test/agent-ops\n", 1)
	if err := os.WriteFile(agent, []byte(marked), 0o700); err != nil {
		t.Fatal(err)
	}

	s.edit(`toplevel = testSystem { name = "www"; };`, `toplevel = testSystem { name = "www"; version = "2"; };`)
	if code, _, _ := s.run("deploy", "www-1"); code != 0 {
		t.Fatalf("second deploy: exit %d", code)
	}
	if got, want := s.current("www-1"), s.state().Systems["www"].OutPath; got != want {
		t.Fatalf("www-1 runs %s after the second deploy, want %s", got, want)
	}
	got := readLines(t, ops)
	for _, op := range []string{"lock", "realise:/dev/null", "key-owners:/dev/null", "start:/dev/null", "confirm"} {
		if !slices.ContainsFunc(got, func(l string) bool { return strings.HasPrefix(l, op) }) {
			t.Errorf("the second deploy ran the installed agent's %v; want %s among them (the programs were sent instead, or not in the lock's session)", got, op)
		}
	}
	if slices.ContainsFunc(got, func(l string) bool { return strings.HasPrefix(l, "confirm:/dev/null") }) {
		t.Errorf("the confirmation ran in the lock's session (%v): it must prove a new login", got)
	}
	if b, _ := os.ReadFile(agent); string(b) != marked {
		t.Error("the second deploy reinstalled the agent")
	}

	before := len(got)
	if code, _, _ := s.run("rollback", "www-1"); code != 0 {
		t.Fatalf("rollback: exit %d", code)
	}
	if got := readLines(t, ops)[before:]; !slices.ContainsFunc(got, func(l string) bool { return strings.HasPrefix(l, "lock:") }) || !slices.Contains(got, "start:/dev/null") {
		t.Errorf("the rollback ran the agent's %v; want lock, and start in its session", got)
	}

	// A host that lost its agent gets it again; agents of other releases
	// go once they have not run for 30 days, not before.
	dir := filepath.Dir(agent)
	stale, recent := filepath.Join(dir, "nix-hive-agent-000000000000"), filepath.Join(dir, "nix-hive-agent-111111111111")
	for _, p := range []string{stale, recent} {
		if err := os.WriteFile(p, []byte("#!/bin/sh\n"), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	long := time.Now().Add(-40 * 24 * time.Hour)
	if err := os.Chtimes(stale, long, long); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(agent); err != nil {
		t.Fatal(err)
	}
	if code, _, _ := s.run("deploy", "www-1"); code != 0 {
		t.Fatalf("deploy after the agent was removed: exit %d", code)
	}
	if b, err := os.ReadFile(agent); err != nil || string(b) != host.AgentScript() {
		t.Errorf("the agent was not installed again: %v", err)
	}
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Errorf("an agent of another release unused for 40 days is still there: %v", err)
	}
	if _, err := os.Stat(recent); err != nil {
		t.Errorf("an agent of another release run recently was removed: %v", err)
	}

	// Where the agent cannot be installed, root's programs are sent with
	// each command, as before it: the deploy works, and says so.
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dir, []byte("not a directory\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	s.edit(`version = "2"; };`, `version = "3"; };`)
	code, _, stderr := s.run("deploy", "www-1")
	if code != 0 {
		t.Fatalf("deploy where the agent cannot be installed: exit %d", code)
	}
	if got, want := s.current("www-1"), s.state().Systems["www"].OutPath; got != want {
		t.Errorf("www-1 runs %s, want %s", got, want)
	}
	if want := "nix-hive: warning: www-1: install nix-hive-agent at " + host.RootAgentPath(); !strings.Contains(stderr, want) || !strings.Contains(stderr, "programs go with each command there instead") {
		t.Errorf("stderr does not say the agent could not be installed (want %q):\n%s", want, stderr)
	}
	if fi, err := os.Stat(dir); err != nil || fi.IsDir() {
		t.Errorf("%s changed: %v", dir, err)
	}
}

func readLines(t *testing.T, p string) []string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("read %s: %v", p, err)
	}
	return strings.Fields(string(b))
}

// The agent's activation job runs as root for a login that sudo lets run
// the agent and nothing else, so it activates only what a deploy can
// name: a system in the Nix store and that system's own specialisations.
// A directory elsewhere, or a specialisation that climbs out of the
// system, is refused before anything of it runs.
func TestAgentJobActivatesOnlyStoreSystems(t *testing.T) {
	l := appLab(t, 1)
	h := l.Host("app-1")
	for path, text := range map[string]string{
		"/root/agent":                            host.AgentScript(),
		"/root/evil/bin/switch-to-configuration": "#!/bin/sh\ntouch /root/pwned\n",
	} {
		if err := os.MkdirAll(filepath.Dir(h.Path(path)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(h.Path(path), []byte(text), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for i, c := range []struct{ target, spec, want string }{
		{"/root/evil", "", "not a store path: /root/evil"},
		{"/nix/store/../../root/evil", "", "not a store path"},
		{"/nix/store/00000000000000000000000000000000-x", "../../../root/evil", "not a specialisation: ../../../root/evil"},
	} {
		args := []string{"sh", "/root/agent", "start", fmt.Sprintf("20261207T000000-%06d", i), "", "1", "plain", "test", c.target, "0", "60", "0"}
		if c.spec != "" {
			args = append(args, c.spec)
		}
		out, _ := h.Exec(context.Background(), args...)
		if !strings.Contains(string(out), "done failed "+c.want) {
			t.Errorf("start %s %s: %s, want it refused (%s)", c.target, c.spec, out, c.want)
		}
	}
	if _, err := os.Stat(h.Path("/root/pwned")); err == nil {
		t.Error("the agent's job ran a switch-to-configuration outside the store")
	}
}
