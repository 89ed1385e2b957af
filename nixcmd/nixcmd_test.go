package nixcmd

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/nix-hive/nix-hive/internal/testenv"
)

func TestRunForwardsStderrAndExplainsFailures(t *testing.T) {
	testenv.Tool(t, "sh", "a POSIX shell stands in for nix")
	var log bytes.Buffer
	r := &Runner{Stderr: &log, Prefix: "nix: "}
	out, err := r.Run(context.Background(), "sh", "-c", `echo building >&2; echo "warning: you did not specify '--add-root'" >&2; echo result; echo "error: it broke" >&2; echo "  at line 3" >&2; exit 1`)
	var ne *Error
	if !errors.As(err, &ne) {
		t.Fatalf("want *Error, got %v", err)
	}
	if string(out) != "result\n" {
		t.Errorf("stdout = %q", out)
	}
	// What Nix said, from error: on, and once: not streamed too.
	if msg := err.Error(); msg != "error: it broke\n  at line 3" {
		t.Errorf("error should be the part from error: on: %q", msg)
	}
	if !strings.Contains(log.String(), "nix: building\n") || strings.Contains(log.String(), "--add-root") || strings.Contains(log.String(), "it broke") {
		t.Errorf("forwarded stderr: %q", log.String())
	}
	// -v: the command line too.
	r.Verbose = true
	if _, err := r.Run(context.Background(), "sh", "-c", `echo "error: it broke" >&2; exit 1`); !strings.HasPrefix(err.Error(), "sh -c ") {
		t.Errorf("verbose error lacks the command line: %q", err)
	}
}

func TestCommandEnablesFeatures(t *testing.T) {
	t.Setenv("NIX_CONFIG", "substituters =")
	r := &Runner{Config: []string{"max-jobs = 2"}}
	cmd := r.Command(context.Background(), "nix", "--version")
	var conf string
	for _, e := range cmd.Env {
		if v, ok := strings.CutPrefix(e, "NIX_CONFIG="); ok {
			conf = v
		}
	}
	for _, want := range []string{"substituters =", "extra-experimental-features = nix-command flakes", "max-jobs = 2"} {
		if !strings.Contains(conf, want) {
			t.Errorf("NIX_CONFIG %q lacks %q", conf, want)
		}
	}
}
