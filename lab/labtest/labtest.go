// Package labtest starts labs for tests: the part of the lab that needs
// the testing package, kept out of the nix-hive-lab binary.
package labtest

import (
	"testing"

	"github.com/nix-hive/nix-hive/internal/testenv"
	"github.com/nix-hive/nix-hive/lab"
)

// Require skips the test when the machine cannot run a lab, or fails it
// under CI, where a skipped end-to-end test would hide a broken setup.
func Require(t testing.TB) {
	t.Helper()
	if err := lab.Check(); err != nil {
		testenv.Missing(t, err.Error())
	}
}

// New starts a lab for a test and closes it when the test ends. It calls
// Require first and fails the test when the lab cannot start.
func New(t testing.TB, cfg lab.Config) *lab.Lab {
	t.Helper()
	Require(t)
	l, err := lab.Start(t.Context(), cfg)
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
