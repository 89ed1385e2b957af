package cli

import (
	"errors"
)

// ManCmd is `nix-hive man`.
type ManCmd struct{}

func (c *ManCmd) Run(g *Globals) error {
	return errors.New("man: not implemented yet")
}
