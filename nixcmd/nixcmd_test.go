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

// ShowTrace turns the setting on for the call and keeps the whole trace
// in the error, first line included (Nix 2.8 prints the error, then the
// trace); TraceHint rewords Nix's advice to name the flag that does it.
func TestShowTrace(t *testing.T) {
	testenv.Tool(t, "sh", "a POSIX shell stands in for nix")
	t.Setenv("NIX_CONFIG", "")
	// A long trace, as Nix 2.8 prints one, when show-trace is on; the
	// advice to turn it on otherwise.
	script := `case "$NIX_CONFIG" in
*"show-trace = true"*)
  echo "error: boom" >&2
  i=0; while [ $i -lt 2000 ]; do echo "       … while evaluating 'f' (frame $i)" >&2; i=$((i+1)); done ;;
*) echo "error: boom" >&2; echo "(use '--show-trace' to show detailed location information)" >&2 ;;
esac
exit 1`
	r := &Runner{TraceHint: "nix-hive --show-trace"}
	_, err := r.Run(context.Background(), "sh", "-c", script)
	if err == nil || err.Error() != "error: boom\n(use 'nix-hive --show-trace' to show detailed location information)" {
		t.Errorf("without ShowTrace: %v", err)
	}
	r.ShowTrace = true
	_, err = r.Run(context.Background(), "sh", "-c", script)
	if err == nil || !strings.HasPrefix(err.Error(), "error: boom\n") || !strings.HasSuffix(err.Error(), "(frame 1999)") {
		t.Errorf("with ShowTrace, the error lacks the start or the end of the trace: %.200q", err)
	}
	// Without a hint, Nix's words stay.
	var plain *Error
	if _, err := (&Runner{}).Run(context.Background(), "sh", "-c", script); !errors.As(err, &plain) || !strings.Contains(err.Error(), "use '--show-trace'") {
		t.Errorf("without a hint: %v", err)
	}
}
