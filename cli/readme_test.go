package cli_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nix-hive/nix-hive/internal/nixtest"
	"github.com/nix-hive/nix-hive/internal/testenv"
	"github.com/nix-hive/nix-hive/lab"
)

// The README's walkthrough, run as written (in a directory of the test's
// instead of /tmp/try): a newcomer gets from a checkout to a deployed seed
// hive, a change, a rollback and mux stop with no step that is not
// written there, and nothing is left running or in the holders' socket
// directory afterwards.
func TestREADMEWalkthrough(t *testing.T) {
	nixtest.Require(t)
	if err := lab.Check(); err != nil {
		testenv.Missing(t, "the lab: "+err.Error())
	}
	doc, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, block, _ := strings.Cut(string(doc), "<!-- walkthrough: begin -->\n```sh\n")
	block, _, ok := strings.Cut(block, "```\n<!-- walkthrough: end -->")
	if !ok || !strings.Contains(block, "nix-hive mux stop") {
		t.Fatalf("no walkthrough block in README.md")
	}
	try := filepath.Join(t.TempDir(), "try")
	block = strings.ReplaceAll(block, "/tmp/try", try)
	run := t.TempDir()
	t.Cleanup(func() {
		exec.Command(filepath.Join(try, "nix-hive-lab"), "down", "--dir", filepath.Join(try, "lab")).Run()
	})
	cmd := exec.Command("bash", "-euo", "pipefail", "-c", block)
	cmd.Dir = ".."
	// The defaults a newcomer has: a holder is started (TestMain's
	// NIX_HIVE_MUX_PERSIST=0 is not theirs), in a socket directory the
	// test looks into afterwards.
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "NIX_HIVE_MUX_PERSIST=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, "XDG_RUNTIME_DIR="+run)
	// A file, not a pipe: a process the block leaves behind must not keep
	// the test waiting for the end of its output.
	log, err := os.Create(filepath.Join(t.TempDir(), "walkthrough.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = log, log
	err = cmd.Run()
	log.Close()
	out, _ := os.ReadFile(log.Name())
	t.Logf("the walkthrough:\n%s", out)
	if err != nil {
		t.Fatalf("the README's walkthrough failed: %v", err)
	}
	for _, want := range []string{"warning: 3 consumers", "mux: stopped pid"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("the walkthrough's output lacks %q", want)
		}
	}
	if left, _ := os.ReadDir(filepath.Join(run, "nix-hive")); len(left) != 0 {
		t.Errorf("left in the holders' socket directory: %d files", len(left))
	}
	if ps, err := exec.Command("pgrep", "-af", try).Output(); err == nil {
		t.Errorf("processes of the walkthrough still run:\n%s", ps)
	}
}
