package cli

import (
	"testing"
	"time"

	"github.com/alecthomas/kong"

	"github.com/nix-hive/nix-hive/deploy"
)

// The timeouts' defaults are deploy's: each command's flag says the same
// as the zero value it would otherwise leave to deploy.
func TestActivationDefaults(t *testing.T) {
	parser, err := kong.New(&CLI{}, kong.Name("nix-hive"))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]time.Duration{
		"confirm-timeout":    deploy.DefaultConfirmTimeout,
		"activation-timeout": deploy.DefaultActivationTimeout,
		"reboot-timeout":     deploy.DefaultRebootTimeout,
	}
	seen := map[string]int{}
	for _, cmd := range []string{"deploy", "apply-local", "rollback"} {
		var node *kong.Node
		for _, c := range parser.Model.Children {
			if c.Name == cmd {
				node = c
			}
		}
		if node == nil {
			t.Fatalf("no command %s", cmd)
		}
		for _, f := range node.Flags {
			w, ok := want[f.Name]
			if !ok {
				continue
			}
			seen[f.Name]++
			if d, err := time.ParseDuration(f.Default); err != nil || d != w {
				t.Errorf("%s --%s defaults to %q, deploy to %s", cmd, f.Name, f.Default, w)
			}
		}
	}
	if seen["confirm-timeout"] != 3 || seen["activation-timeout"] != 3 || seen["reboot-timeout"] != 1 {
		t.Errorf("flags seen: %v; want the confirm and activation timeouts on deploy, apply-local and rollback, the reboot timeout on deploy", seen)
	}
}
