package cli

import (
	"context"
	"fmt"
	"os/user"

	"github.com/nix-hive/nix-hive/deploy"
	"github.com/nix-hive/nix-hive/eval"
	"github.com/nix-hive/nix-hive/nixcmd"
	"github.com/nix-hive/nix-hive/plan"
	"github.com/nix-hive/nix-hive/starlark"
	"github.com/nix-hive/nix-hive/state"
)

// ApplyLocalCmd is `nix-hive apply-local`.
type ApplyLocalCmd struct {
	Steps
	Rollout
	Activation
	Instance        string `help:"The instance this machine is (default: the one named like this machine's hostname, or whose host is it)."`
	Sudo            bool   `help:"Run what needs root through sudo (when not run as root)."`
	AskSudoPassword bool   `help:"With --sudo: ask for the sudo password once, on the terminal, before anything runs. Without it nix-hive asks when sudo turns out to want one."`
	KeyLimits
}

func (c *ApplyLocalCmd) Help() string {
	return `Builds the system of the instance this machine is and activates it here,
without SSH: the instance named like this machine's hostname (or its first
label), or whose host attribute is the hostname, or --instance NAME.

Everything else is as in a deploy to that instance: the deploy lock, the
activation detached as a job of its own (a closed terminal does not stop
it half-way), magic rollback (the machine returns to what it ran before
unless nix-hive confirms, from a new process, within --confirm-timeout),
the policy's checks and rollback, keys, and hive.state. The instance's
store and jump host play no part: the closure is built in this machine's
store.

Activating needs root: run as root, or with --sudo.`
}

func (c *ApplyLocalCmd) Run(ctx context.Context, g *Globals, h *eval.Hive, st *state.File, pol *starlark.Policy, nix *nixcmd.Runner) error {
	act, err := c.activation()
	if err != nil {
		return err
	}
	opts := deploy.Options{Activation: act, Connection: deploy.Connection{Owner: owner()}, Steps: deploySteps(&c.Steps, &c.KeyLimits), Abort: g.abort}
	name, err := deploy.ThisInstance(h.Inventory, c.Instance)
	if err != nil {
		return err
	}
	me, err := user.Current()
	if err != nil {
		return fmt.Errorf("apply-local: who runs it: %w", err)
	}
	if me.Uid != "0" {
		if !c.Sudo {
			return fmt.Errorf("apply-local as %s: activating %s needs root: run as root, or with --sudo", me.Username, name)
		}
		// -n: sudo never prompts on the terminal itself (its prompt would
		// fight the progress view, and a command in its own process
		// group cannot read the terminal); nix-hive asks once instead.
		esc := Escalation{Sudo: "sudo -n", AskSudoPassword: c.AskSudoPassword}
		if opts.Connection.Privilege, err = esc.privilege(g); err != nil {
			return err
		}
	}
	local := deploy.LocalHive(h, name, me.Username)
	prep, err := plan.Prepare(ctx, plan.Request{Hive: local, State: st, Policy: pol, Patterns: []string{name}, Paths: c.paths(eval.Build)})
	if err != nil {
		return err
	}
	prep.Plan.Local() // before --confirm shows it
	if c.Confirm {
		if err := confirm(ctx, g, prep, st, deploy.Local{}, nix, &c.Activation, 1, false); err != nil {
			return err
		}
	}
	view := g.newDeployView(len(prep.Plan.Targets))
	opts.Record = deploy.Record{State: st, Events: view.Event}
	report, err := deploy.ApplyLocal(ctx, prep, opts)
	if verr := view.Close(); err == nil {
		err = verr
	}
	if err != nil {
		return err
	}
	return g.finishReport(report)
}
