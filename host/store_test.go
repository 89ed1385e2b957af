package host

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// A substitution sent as a program (a login without the agent: root
// before it has one, or through sudo) starts nix-store, and so its ssh,
// with sshMalloc's settings, also where sudo clears the environment. The
// program runs here with a nix-store that notes its environment and a
// sudo that, as the real one, gives the command an environment of its
// own.
func TestSubstitutionProgramSetsSSHMalloc(t *testing.T) {
	for _, c := range []struct {
		name, user string
		esc        escalation
	}{
		{"root without the agent", "root", escalation{}},
		{"through sudo", "deployer", escalation{prefix: "sudo -n --"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			notes := filepath.Join(dir, "notes")
			stub := func(name, body string) {
				if err := os.WriteFile(filepath.Join(dir, name), []byte("#!/bin/sh\n"+body), 0o755); err != nil {
					t.Fatal(err)
				}
			}
			stub("nix-store", `printf '%s %s|%s\n' "${MALLOC_MMAP_THRESHOLD_-unset}" "${MALLOC_TRIM_THRESHOLD_-unset}" "${NIX_SSHOPTS-unset}" >`+notes+"\n")
			stub("sudo", `while [ "$1" != -- ]; do shift; done; shift
exec env -i PATH="$PATH" "$@"
`)
			s := Substitution{From: "ssh://root@store", Store: "store", knownHosts: []string{"store ssh-ed25519 AAAA"}, ConnectTimeout: 5 * time.Second}
			cmd, argv := s.command([]string{"/nix/store/aaaa-x"}, c.user, c.esc)
			if argv != nil {
				t.Fatalf("the substitution is the agent's (%v); want a program", argv)
			}
			run := exec.Command("sh", "-c", cmd)
			run.Env = append(os.Environ(), "PATH="+dir+":"+os.Getenv("PATH"))
			if out, err := run.CombinedOutput(); err != nil {
				t.Fatalf("%v: %s\n%s", err, out, cmd)
			}
			b, err := os.ReadFile(notes)
			if err != nil {
				t.Fatalf("nix-store did not run: %v\n%s", err, cmd)
			}
			malloc, opts, _ := strings.Cut(strings.TrimSpace(string(b)), "|")
			if malloc != "8388608 16777216" {
				t.Errorf("nix-store started with MALLOC_MMAP_THRESHOLD_ MALLOC_TRIM_THRESHOLD_ %q; want 8388608 16777216", malloc)
			}
			if !strings.Contains(opts, "StrictHostKeyChecking=yes") {
				t.Errorf("nix-store started with NIX_SSHOPTS %q; want the store's pinned key checked", opts)
			}
		})
	}
}
