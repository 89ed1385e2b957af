package cli

import (
	"fmt"

	"github.com/nix-hive/nix-hive/host"
)

// AgentCmd is `nix-hive agent`.
type AgentCmd struct {
	PrintVersion bool `name:"print-version" help:"Print only the agent's version."`
}

func (c *AgentCmd) Help() string {
	return `Prints nix-hive-agent: what nix-hive runs as root on a host whose login is
not root, one fixed operation per call (take the deploy lock, start an
activation job, confirm it, reboot, write a key, realise store paths from a
substituter), so that sudo can allow that file and nothing else.

On NixOS, nixosModules.default (lib/module.nix) installs this nix-hive's
agent and writes the sudo rule:

  nix-hive.sudo.user = "deploy";
  nix-hive.sudo.noPassword = true;  # optional: NOPASSWD

Elsewhere, install it root-owned where the login's PATH finds it:

  nix-hive agent > /usr/local/bin/nix-hive-agent
  chmod 0755 /usr/local/bin/nix-hive-agent

and allow it alone in sudoers:

  deploy ALL=(root) /usr/local/bin/nix-hive-agent

(see README: Non-root logins and sudo). nix-hive uses a host's agent
only when its version is this nix-hive's.`
}

func (c *AgentCmd) Run(g *Globals) error {
	if c.PrintVersion {
		_, err := fmt.Fprintln(g.stdout, host.AgentVersion())
		return err
	}
	_, err := fmt.Fprint(g.stdout, host.AgentScript())
	return err
}
