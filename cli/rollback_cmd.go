package cli

import (
	"context"

	"github.com/nix-hive/nix-hive/deploy"
	"github.com/nix-hive/nix-hive/eval"
	"github.com/nix-hive/nix-hive/state"
	"github.com/nix-hive/nix-hive/transport"
)

// RollbackCmd is `nix-hive rollback`.
type RollbackCmd struct {
	Fleet
	Parallel int      `default:"16" help:"Hosts worked on at once."`
	Targets  []string `arg:"" help:"Instance name globs, or @tag globs ('*' for all: a fleet-wide rollback is typed out)."`
	Escalation
	Guard
}

func (c *RollbackCmd) Help() string {
	return `Switches each instance to the newest earlier generation of its system
profile that the host records as good (deployed by nix-hive, confirmed,
its checks passed; never one that was rolled back or failed) and confirms
that it is active; with none, it says so and changes nothing. Like a deploy's activation, it runs on the
host detached from the SSH connection, under the host's deploy lock, and
with magic rollback the host returns to where it was unless confirmed over
a new connection. Targets are required: rolling back a whole fleet should
be typed out ('*').`
}

func (c *RollbackCmd) Run(ctx context.Context, g *Globals, h *eval.Hive, st *state.File, pool *transport.Pool) error {
	targets, err := h.Inventory.Select(c.Targets)
	if err != nil {
		return err
	}
	conn, err := connection(g, &c.Fleet, &c.Escalation, c.Parallel)
	if err != nil {
		return err
	}
	rows := deploy.Rollback(ctx, pool, h.Inventory, targets, deploy.RollbackOptions{Activation: c.activation(), Connection: conn, State: st})
	if err := st.Save(); err != nil {
		g.warnf("%v", err)
	}
	return fleetOutcome(ctx, g, "rollback", rows, "INSTANCE\tBEFORE\tAFTER\tRESULT", func(r deploy.RollbackRow) ([]string, string) {
		return []string{r.Instance, r.Before, r.After}, r.Error
	})
}
