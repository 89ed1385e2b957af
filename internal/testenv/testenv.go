package testenv

import (
	"os"
	"os/exec"
	"testing"
)

// CI reports whether the tests run under CI, where nothing may be skipped.
func CI() bool { return os.Getenv("CI") != "" }

// Missing skips t, or fails it under CI, saying what is missing and how to
// get it.
func Missing(t testing.TB, what string) {
	t.Helper()
	if CI() {
		t.Fatalf("CI: cannot run: %s", what)
	}
	t.Skipf("skipping: %s", what)
}

// Tool returns the path of a program on PATH; without it the test skips
// (fails under CI). hint says where it comes from (a Debian package).
func Tool(t testing.TB, name, hint string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		Missing(t, name+" not found in PATH ("+hint+")")
	}
	return p
}
