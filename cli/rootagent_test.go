package cli_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/nix-hive/nix-hive/host"
	"github.com/nix-hive/nix-hive/lab"
)

// A root login's first deploy gets nix-hive's agent into the host's
// store, once: www-1 substitutes it from its store portico, which was
// given it from here (portico is no target: only its store). Later
// deploys and rollbacks run its operations instead of sending their
// programs, the substitution, the keys' owners question and the job's
// start inside the deploy lock's session. The test marks www-1's agent
// so that it logs each operation it runs, and its stdin: /dev/null when
// the lock's session ran it, the SSH channel when it had a session of
// its own. A later deploy that got the agent again, or sent programs
// instead, would leave no log.
func TestRootLoginRunsTheStoresAgent(t *testing.T) {
	s := newSeed(t)
	sshStarts := recordSSHMalloc(t, s.lab.Host("www-1"))
	if code, _, _ := s.run("deploy", "www-1"); code != 0 {
		t.Fatalf("first deploy: exit %d", code)
	}
	h := s.lab.Host("www-1")
	// The agent's substitution (need agent) brought the system: its ssh
	// to portico ran with the malloc settings that spare it page faults.
	wantMalloc(t, "the first deploy's substitution", sshStarts(), 1)
	agent := h.Path(host.RootAgentPath())
	for _, n := range []string{"www-1", "portico"} {
		b, err := os.ReadFile(s.lab.Host(n).Path(host.RootAgentPath()))
		if err != nil || string(b) != host.AgentScript() {
			t.Fatalf("%s has no agent at %s, or another one (%d bytes, want %d): %v", n, host.RootAgentPath(), len(b), len(host.AgentScript()), err)
		}
		if l, err := os.Readlink(s.lab.Host(n).Path("/nix/var/nix/gcroots/nix-hive-agent")); err != nil || l != host.RootAgentPath() {
			t.Errorf("%s's store does not keep the agent: gcroots/nix-hive-agent -> %q (%v)", n, l, err)
		}
	}
	// The store's pinned key is kept for later substitutions, in a file
	// named by its content, with nothing left beside it.
	kh := knownHostsFiles(t, s.lab.Host("www-1").Path("/run/nix-hive"))
	if len(kh) != 1 {
		t.Fatalf("www-1 keeps the known hosts of its store in %v; want one file", kh)
	}
	khInfo, err := os.Stat(kh[0])
	if b, _ := os.ReadFile(kh[0]); err != nil || !strings.Contains(string(b), s.lab.Host("portico").HostKey) {
		t.Fatalf("%s holds %q (%v); want portico's pinned key", kh[0], b, err)
	}
	b, _ := os.ReadFile(agent)
	ops := h.Path("/run/nix-hive-test/agent-ops")
	marked := strings.Replace(string(b), "\n", "\nprintf '%s:%s\\n' \"${1-}\" \"$(readlink /proc/$$/fd/0)\" >>/run/nix-hive-test/agent-ops\n", 1)
	if err := os.Chmod(agent, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(agent, []byte(marked), 0o444); err != nil {
		t.Fatal(err)
	}

	s.edit(`toplevel = testSystem { name = "www"; };`, `toplevel = testSystem { name = "www"; version = "2"; };`)
	if code, _, _ := s.run("deploy", "www-1"); code != 0 {
		t.Fatalf("second deploy: exit %d", code)
	}
	if got, want := s.current("www-1"), s.state().Systems["www"].OutPath; got != want {
		t.Fatalf("www-1 runs %s after the second deploy, want %s", got, want)
	}
	// And the agent's realise.
	wantMalloc(t, "the second deploy's substitution", sshStarts(), 2)
	got := readLines(t, ops)
	for _, op := range []string{"lock", "realise:/dev/null", "key-owners:/dev/null", "start:/dev/null", "confirm"} {
		if !slices.ContainsFunc(got, func(l string) bool { return strings.HasPrefix(l, op) }) {
			t.Errorf("the second deploy ran the agent's %v; want %s among them (the programs were sent instead, or not in the lock's session)", got, op)
		}
	}
	if slices.ContainsFunc(got, func(l string) bool { return strings.HasPrefix(l, "confirm:/dev/null") }) {
		t.Errorf("the confirmation ran in the lock's session (%v): it must prove a new login", got)
	}
	if b, _ := os.ReadFile(agent); string(b) != marked {
		t.Error("the second deploy got the agent again")
	}
	if again := knownHostsFiles(t, s.lab.Host("www-1").Path("/run/nix-hive")); !slices.Equal(again, kh) {
		t.Errorf("after the second deploy, known hosts in %v; want %v", again, kh)
	} else if fi, err := os.Stat(kh[0]); err != nil || !fi.ModTime().Equal(khInfo.ModTime()) {
		t.Errorf("the second deploy wrote %s again (%v); it should read it", kh[0], err)
	}

	before := len(got)
	if code, _, _ := s.run("rollback", "www-1"); code != 0 {
		t.Fatalf("rollback: exit %d", code)
	}
	if got := readLines(t, ops)[before:]; !slices.ContainsFunc(got, func(l string) bool { return strings.HasPrefix(l, "lock:") }) || !slices.Contains(got, "start:/dev/null") {
		t.Errorf("the rollback ran the agent's %v; want lock, and start in its session", got)
	}

	// A host whose garbage collection took its agent gets it again.
	ctx := context.Background()
	if out, err := h.Exec(ctx, "sh", "-c", `rm /nix/var/nix/gcroots/nix-hive-agent && nix-store --delete "$0"`, host.RootAgentPath()); err != nil {
		t.Fatalf("delete www-1's agent: %v: %s", err, out)
	}
	if _, err := os.Stat(agent); !os.IsNotExist(err) {
		t.Fatalf("www-1's agent is still there: %v", err)
	}
	// And a wrong known hosts file under the store's name (not one a
	// write of nix-hive's leaves: a hand's) costs the agent's
	// substitution, which trusts it, and the agent's realise, which
	// checks it, writes it again.
	if err := os.WriteFile(kh[0], []byte("198.18.1.2 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBadBadBadBadBadBadBadBadBadBadBadBadBadBad0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	s.edit(`version = "2"; };`, `version = "3"; };`)
	if code, _, _ := s.run("deploy", "www-1"); code != 0 {
		t.Fatalf("deploy after the agent was collected: exit %d", code)
	}
	if b, err := os.ReadFile(kh[0]); err != nil || !strings.Contains(string(b), s.lab.Host("portico").HostKey) {
		t.Errorf("after the deploy, %s holds %q (%v); want portico's pinned key again", kh[0], b, err)
	}
	if got, want := s.current("www-1"), s.state().Systems["www"].OutPath; got != want {
		t.Errorf("www-1 runs %s, want %s", got, want)
	}
	if b, err := os.ReadFile(agent); err != nil || string(b) != host.AgentScript() {
		t.Errorf("www-1 did not get the agent again: %v", err)
	}
}

// recordSSHMalloc puts an ssh first on h's PATH that notes the glibc
// malloc settings it was started with, then runs the real one; what it
// returns reads the notes, one line per ssh started.
func recordSSHMalloc(t *testing.T, h *lab.Host) func() []string {
	t.Helper()
	const notes = "/run/nix-hive-test/ssh-malloc"
	wrapper := `#!/bin/sh
mkdir -p /run/nix-hive-test
printf '%s %s\n' "${MALLOC_MMAP_THRESHOLD_-unset}" "${MALLOC_TRIM_THRESHOLD_-unset}" >>` + notes + `
exec /usr/bin/ssh "$@"
`
	if err := os.WriteFile(filepath.Join(h.Root, "bin", "ssh"), []byte(wrapper), 0o755); err != nil {
		t.Fatal(err)
	}
	return func() []string {
		b, _ := os.ReadFile(h.Path(notes))
		return strings.Fields(strings.ReplaceAll(string(b), " ", "/"))
	}
}

// wantMalloc fails unless at least n ssh were started, each with
// host.sshMalloc's settings.
func wantMalloc(t *testing.T, what string, starts []string, n int) {
	t.Helper()
	if len(starts) < n {
		t.Errorf("%s: %d ssh started on the host (%v); want at least %d", what, len(starts), starts, n)
	}
	for _, l := range starts {
		if l != "8388608/16777216" {
			t.Errorf("%s: an ssh started with MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_ %s; want 8388608/16777216", what, l)
		}
	}
}

// knownHostsFiles lists the known_hosts files in a host's dir, and any
// file a write left beside them.
func knownHostsFiles(t *testing.T, dir string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, "known_hosts*"))
	if err != nil {
		t.Fatal(err)
	}
	return m
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
