package eval

import (
	"context"
	"strings"
	"testing"

	"github.com/nix-hive/nix-hive/internal/nixtest"
)

// A hive whose evaluation throws, deep in a recursion: without
// ShowTrace the error is Nix's message with its advice reworded to name
// TraceHint; with it, the trace down from where the hive called, whole
// (Nix 2.8 prints it after the message, and repeats every frame).
func TestShowTrace(t *testing.T) {
	nixtest.Require(t)
	src := writeHive(t, `let f = x: if x > 30 then throw "boom: no ${toString x}" else f (x + 1); in {
  systems.www.toplevel = f 0;
  instances.a.system = "www";
}`, nonce(t))
	for _, show := range []bool{false, true} {
		e := newEvaluator(t, src, nil)
		e.Nix.ShowTrace, e.Nix.TraceHint = show, "nix-hive --show-trace"
		inv, err := e.Inventory(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		_, err = e.OutPaths(context.Background(), inv, []string{"www"})
		if err == nil {
			t.Fatalf("ShowTrace %v: the hive's throw is no error", show)
		}
		msg := err.Error()
		t.Logf("ShowTrace %v: %d bytes:\n%.2000s", show, len(msg), msg)
		// The call in the hive (line 2) is only in the full trace.
		trace := strings.Contains(msg, "from call site") && strings.Contains(msg, "hive.nix:2:")
		if !strings.Contains(msg, "boom: no 31") || trace != show {
			t.Errorf("ShowTrace %v: message (trace: %v):\n%s", show, trace, msg)
		}
		if advice := strings.Contains(msg, "use 'nix-hive --show-trace'"); advice == show {
			t.Errorf("ShowTrace %v: advice to use nix-hive --show-trace: %v", show, advice)
		}
		if strings.Contains(msg, "use '--show-trace'") {
			t.Errorf("ShowTrace %v: Nix's own advice, which nix-hive's user cannot follow:\n%s", show, msg)
		}
	}
}
