package cli

import (
	"bufio"
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"os/user"
	"strings"
	"time"

	"github.com/nix-hive/nix-hive/deploy"
	"github.com/nix-hive/nix-hive/endpoint"
	"github.com/nix-hive/nix-hive/eval"
	"github.com/nix-hive/nix-hive/host"
	"github.com/nix-hive/nix-hive/internal/cmdline"
	"github.com/nix-hive/nix-hive/nixcmd"
	"github.com/nix-hive/nix-hive/plan"
	"github.com/nix-hive/nix-hive/starlark"
	"github.com/nix-hive/nix-hive/state"
	"github.com/nix-hive/nix-hive/transport"
)

// DeployCmd is `nix-hive deploy`.
type DeployCmd struct {
	Fleet
	Steps
	Rollout
	Parallel          int      `default:"0" help:"Hosts worked on at once; 0 picks 8 per store of the plan, at least 16, at most 256 (each store serves 8 consumers at once)."`
	Targets           []string `arg:"" optional:"" help:"Instance name globs, or @tag globs (default: all)."`
	Systems           string   `help:"Deploy the systems CI built: FILE is what nix-hive build printed there, or a JSON map of system name to store path. Nothing is evaluated or built; every closure must carry the hive's signature." placeholder:"FILE" type:"path"`
	From              string   `help:"With --systems: the binary cache CI copied the systems to (file://, http(s)://, ssh://, ssh-ng://), fetched from on this machine, signatures required." placeholder:"URL"`
	RollbackSucceeded bool     `help:"When a target fails: start no further host, and return every host this deploy changed to what it ran before, the latest wave first, each confirmed (as deploy-rs's --rollback-succeeded; a policy's rollback_succeeded = True does the same)."`
	Specialisation    string   `help:"Activate specialisation/NAME of each target's system (with switch or test), instead of the hive's per-instance specialisation; the system profile still gets the system, as nixos-rebuild --specialisation does." placeholder:"NAME"`
	Activation
	BuildHost
	TrustHiveKey bool `help:"Pass the hive's public key to consumers on the command line instead of relying on their nix.conf (for hosts not yet configured with lib/module.nix)."`
	Escalation
	Reboot        bool          `help:"With --goal boot: reboot each host after activation, wait for it, and check it booted the new system."`
	RebootTimeout time.Duration `default:"10m" help:"How long to wait for a host to come back from --reboot (and, with the boot fallback, as long again for the boot its watchdog makes into the old system)."`
	BootFallback  bool          `default:"true" negatable:"" help:"With --reboot: boot the new system once (systemd-boot's one-shot entry, GRUB's grub-reboot) and keep the running one the default until the new one has come back and answered; a new system that does not come up is left by the host's next boot (a watchdog's or a power cycle's). A host whose boot loader cannot fails before anything changes, unless --force."`
	KeyLimits
}

// Activation is how deploy and apply-local activate: the flags they
// share.
type Activation struct {
	Goal  string `default:"switch" enum:"switch,boot,test,dry-activate" help:"switch-to-configuration goal: switch, boot, test or dry-activate."`
	Force bool   `help:"Activate instances that already run the wanted system."`
	Guard
	Confirm bool `short:"i" help:"Build, then show the plan with what changes on each host (as plan does) and ask before touching any."`
}

// Guard is how an activation job is guarded on its host: the flags that
// deploy, apply-local and rollback share. Their defaults are deploy's
// (TestActivationDefaults holds them together).
type Guard struct {
	MagicRollback     bool          `default:"true" negatable:"" help:"For switch and test (a rollback is a switch): each host returns to what it ran before by itself unless nix-hive confirms, over a new connection, within --confirm-timeout (a system that breaks SSH or the network rolls back)."`
	ConfirmTimeout    time.Duration `default:"30s" help:"How long a host waits for the confirmation before it rolls back."`
	ActivationTimeout time.Duration `default:"30m" help:"Limit for one switch-to-configuration on a host."`
}

// activation is the deploy.Activation the flags decide (a rollback's is
// a switch).
func (g *Guard) activation() deploy.Activation {
	return deploy.Activation{MagicRollback: g.MagicRollback, ConfirmTimeout: g.ConfirmTimeout, ActivationTimeout: g.ActivationTimeout}
}

// activation is the deploy.Activation the flags decide.
func (a *Activation) activation() (deploy.Activation, error) {
	goal, err := host.ParseGoal(a.Goal)
	if err != nil {
		return deploy.Activation{}, err
	}
	act := a.Guard.activation()
	act.Goal, act.Force = goal, a.Force
	return act, nil
}

// connection is how a command works on its hosts: the fleet's connect
// timeout, parallel at once, the privilege flags' way to root (which may
// ask for the password now), and this run as the deploy locks' owner.
func connection(g *Globals, f *Fleet, e *Escalation, parallel int) (deploy.Connection, error) {
	priv, err := e.privilege(g)
	if err != nil {
		return deploy.Connection{}, err
	}
	return deploy.Connection{ConnectTimeout: f.ConnectTimeout, Parallel: parallel, Privilege: priv, Owner: owner()}, nil
}

// deploySteps are the deploy.Steps of --no and the keys' time limit; a
// deploy adds --trust-hive-key.
func deploySteps(s *Steps, k *KeyLimits) deploy.Steps {
	return deploy.Steps{SkipPush: s.skip("push"), SkipKeys: s.skip("keys"), KeyTimeout: k.KeyTimeout}
}

func (c *DeployCmd) Help() string {
	return `Builds each unique system once, pushes closures to store instances (and to
instances without a store), lets consumers substitute from their store with
signatures checked, then activates in waves, stores before their consumers.
An instance already running its wanted system is left alone (--force
re-activates). Every host ends in the summary; the exit status is non-zero
if any host failed.

Activation runs on each host as a job detached from the SSH connection: a
dropped connection, or nix-hive being killed, never stops it half-way, and
nix-hive reconnects to learn how it ended. With magic rollback (switch and
test, on by default) the host returns to what it ran before unless nix-hive
confirms over a new SSH connection within --confirm-timeout. A second
deploy of a host that a deploy holds is refused at once, naming the holder.

Ctrl-C starts nothing new and stops transfers; running activations finish
and every host's state is recorded in hive.state. A second Ctrl-C stops
waiting and names the hosts whose activation still runs (it finishes there,
and rolls back unconfirmed).`
}

// options are the deploy.Options the flags decide. Usage errors come
// before the privilege flags may ask for a password.
func (c *DeployCmd) options(g *Globals) (deploy.Options, error) {
	act, err := c.activation()
	if err != nil {
		return deploy.Options{}, err
	}
	if c.Specialisation != "" {
		if err := endpoint.CheckSpecialisation(c.Specialisation); err != nil {
			return deploy.Options{}, cmdline.UsageError{Err: fmt.Errorf("--specialisation %q %w", c.Specialisation, err)}
		}
	}
	if c.Specialisation != "" && act.Goal == host.GoalBoot {
		return deploy.Options{}, cmdline.UsageError{Err: fmt.Errorf("--specialisation needs --goal switch or test: the boot loader starts the system itself, never a specialisation")}
	}
	if c.Reboot && act.Goal != host.GoalBoot {
		return deploy.Options{}, cmdline.UsageError{Err: fmt.Errorf("--reboot needs --goal boot (a switch or test already runs the new system)")}
	}
	act.Reboot, act.RebootTimeout, act.BootFallback = c.Reboot, c.RebootTimeout, c.BootFallback
	conn, err := connection(g, &c.Fleet, &c.Escalation, c.Parallel)
	if err != nil {
		return deploy.Options{}, err
	}
	steps := deploySteps(&c.Steps, &c.KeyLimits)
	steps.TrustKey = c.TrustHiveKey
	return deploy.Options{Activation: act, Connection: conn, Steps: steps, Abort: g.abort, RollbackSucceeded: c.RollbackSucceeded}, nil
}

func (c *DeployCmd) Run(ctx context.Context, g *Globals, h *eval.Hive, st *state.File, pol *starlark.Policy,
	pool *transport.Pool, nix *nixcmd.Runner) error {
	opts, err := c.options(g)
	if err != nil {
		return err
	}
	mode := c.paths(eval.Build)
	pb, err := prebuilt(c.Systems, c.From)
	if err != nil {
		return err
	}
	if pb == nil {
		if err := c.buildOn(h, st, pool); err != nil {
			return err
		}
	}
	prep, err := plan.Prepare(ctx, plan.Request{Hive: h, State: st, Policy: pol, Patterns: c.Targets, Paths: mode, Specialisation: c.Specialisation, Prebuilt: pb})
	if err != nil {
		return err
	}
	if c.Confirm {
		if err := confirm(ctx, g, prep, st, pool, nix, &c.Activation, cmp.Or(c.Parallel, deploy.AutoParallel(prep.Plan)), c.TrustHiveKey); err != nil {
			return err
		}
	}
	opts.Connection.Files = hostFiles(pool, false) // reading a host that needs nothing is cheaper than locking it
	view := g.newDeployView(len(prep.Plan.Targets))
	opts.Record = deploy.Record{State: st, Events: view.Event}
	report, err := deploy.Deploy(ctx, prep, pool, nix, opts)
	if verr := view.Close(); err == nil {
		err = verr
	}
	if err != nil {
		return err
	}
	return g.finishReport(report)
}

// errNotConfirmed is the answer no to deploy --confirm.
var errNotConfirmed = errors.New("not confirmed: no host was touched")

// confirm shows the plan and what it changes on the hosts (asked through
// remote, parallel at once), and asks on stdin.
func confirm(ctx context.Context, g *Globals, prep *plan.Prepared, st *state.File, remote host.Remote, nix *nixcmd.Runner, c *Activation, parallel int, trustKey bool) error {
	req := deploy.ChangesRequest{Plan: prep.Plan, Inventory: prep.Hive.Inventory, Remote: remote, State: st, Nix: nix.Quiet(), Parallel: parallel}
	if !trustKey { // consumers are given the key: their nix.conf does not matter
		req.PublicKey, _ = prep.Hive.PublicKey()
	}
	changes := &planChanges{Systems: deploy.Changes(ctx, req)}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	changes.warnUntrusting(g, req.PublicKey)
	writePlan(g.stderr, prep, planSizes(ctx, g, nix, prep.Plan), changes, g.Verbose)
	fmt.Fprint(g.stderr, countPlan(prep.Plan, changes, c.Force).question(c.Goal))
	answer, err := bufio.NewReader(g.stdin).ReadString('\n')
	if err != nil && answer == "" {
		fmt.Fprintln(g.stderr)
		return fmt.Errorf("--confirm: no answer on standard input: %w", errNotConfirmed)
	}
	switch strings.ToLower(strings.TrimSpace(answer)) {
	case "y", "yes":
		return nil
	}
	return errNotConfirmed
}

// owner says who deploys, for hosts' deploy locks: user@machine and pid.
func owner() string {
	who := os.Getenv("USER")
	if u, err := user.Current(); err == nil {
		who = u.Username
	}
	host, _ := os.Hostname()
	return fmt.Sprintf("%s@%s (nix-hive pid %d, since %s)", who, host, os.Getpid(), time.Now().UTC().Format(time.RFC3339))
}
