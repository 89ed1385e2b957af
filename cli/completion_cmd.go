package cli

import (
	"errors"
)

// CompletionCmd is `nix-hive completion SHELL`.
type CompletionCmd struct {
	Shell string `arg:"" enum:"bash,zsh,fish" help:"bash, zsh or fish."`
}

func (c *CompletionCmd) Run(g *Globals) error {
	return errors.New("completion: not implemented yet")
}
