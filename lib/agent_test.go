package hivelib_test

import (
	"os"
	"testing"

	"github.com/nix-hive/nix-hive/host"
)

// lib/agent.sh, which lib/module.nix installs, is this nix-hive's agent:
// hosts use an agent only of their deploying nix-hive's version.
// UPDATE_GOLDEN=1 rewrites it.
func TestAgentScriptIsCurrent(t *testing.T) {
	got, err := os.ReadFile("agent.sh")
	if os.Getenv("UPDATE_GOLDEN") != "" {
		if err := os.WriteFile("agent.sh", []byte(host.AgentScript()), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	if err != nil || string(got) != host.AgentScript() {
		t.Errorf("lib/agent.sh is not this nix-hive's agent (version %s): run `UPDATE_GOLDEN=1 go test ./lib -run TestAgentScriptIsCurrent` (%v)", host.AgentVersion(), err)
	}
}
