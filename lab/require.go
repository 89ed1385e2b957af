package lab

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// Check reports what this machine lacks to run a lab; nil means nothing.
func Check() error {
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root (hosts need mount, pid and network namespaces)")
	}
	for _, f := range []string{sshdPath, sftpServerPath, "/usr/bin/nix", "/proc/self/ns/pid", "/proc/self/ns/net"} {
		if _, err := os.Stat(f); err != nil {
			missing = append(missing, f)
		}
	}
	// Each host mounts its own directories over these.
	for _, o := range overlays {
		if fi, err := os.Stat(o.inHost); err != nil || !fi.IsDir() {
			missing = append(missing, "directory "+o.inHost)
		}
	}
	for _, c := range []string{"nsenter", "ip", "mount", "umount", "awk", "ssh", "nft", "flock", "setsid"} {
		if _, err := exec.LookPath(c); err != nil {
			missing = append(missing, c)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("the lab needs %s", strings.Join(missing, ", "))
	}
	return nil
}

// Require skips the test when the machine cannot run a lab, or fails it
// when the environment variable CI is set: there a skipped end-to-end test
// would hide a broken setup.
func Require(t testing.TB) {
	t.Helper()
	err := Check()
	if err == nil {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("%v (CI is set, so this fails instead of skipping)", err)
	}
	t.Skipf("%v", err)
}

// New starts a lab for a test and closes it when the test ends. It calls
// Require first and fails the test when the lab cannot start.
func New(t testing.TB, cfg Config) *Lab {
	t.Helper()
	Require(t)
	l, err := Start(t.Context(), cfg)
	if err != nil {
		t.Fatalf("start lab: %v", err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("close lab: %v", err)
		}
	})
	return l
}
