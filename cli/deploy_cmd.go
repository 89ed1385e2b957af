package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/user"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nix-hive/nix-hive/deploy"
	"github.com/nix-hive/nix-hive/eval"
	"github.com/nix-hive/nix-hive/starlark"
)

// DeployCmd is `nix-hive deploy`.
type DeployCmd struct {
	Fleet
	Parallel          int           `default:"16" help:"Hosts worked on at once."`
	Targets           []string      `arg:"" optional:"" help:"Instance name globs, or @tag globs (default: all)."`
	Goal              string        `default:"switch" enum:"switch,boot,test,dry-activate" help:"switch-to-configuration goal: switch, boot, test or dry-activate."`
	Force             bool          `help:"Activate instances that already run the wanted system."`
	TrustHiveKey      bool          `help:"Pass the hive's public key to consumers on the command line instead of relying on their nix.conf (for hosts not yet configured with lib/module.nix)."`
	Sudo              string        `default:"sudo" help:"Privilege command for instances whose user is not root."`
	MagicRollback     bool          `default:"true" negatable:"" help:"For switch and test: each host returns to what it ran before by itself unless nix-hive confirms, over a new SSH connection, within --confirm-timeout (a system that breaks SSH or the network rolls back)."`
	ConfirmTimeout    time.Duration `default:"30s" help:"How long a host waits for the confirmation before it rolls back."`
	ActivationTimeout time.Duration `default:"30m" help:"Limit for one switch-to-configuration on a host."`
	Reboot            bool          `help:"With --goal boot: reboot each host after activation, wait for it, and check it booted the new system."`
	RebootTimeout     time.Duration `default:"10m" help:"How long to wait for a host to come back from --reboot."`
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

func (c *DeployCmd) options(g *Globals) (deploy.Options, error) {
	goal, err := deploy.ParseGoal(c.Goal)
	if err != nil {
		return deploy.Options{}, err
	}
	if c.Reboot && goal != deploy.GoalBoot {
		return deploy.Options{}, usageError{fmt.Errorf("--reboot needs --goal boot (a switch or test already runs the new system)")}
	}
	return deploy.Options{
		Goal: goal, Parallel: c.Parallel, SkipPush: g.skip("push"), Force: c.Force,
		TrustKey: c.TrustHiveKey, Sudo: c.Sudo, MagicRollback: c.MagicRollback,
		ConfirmTimeout: c.ConfirmTimeout, ActivationTimeout: c.ActivationTimeout,
		ConnectTimeout: c.ConnectTimeout, Reboot: c.Reboot, RebootTimeout: c.RebootTimeout,
		Abort: g.abort, Owner: owner(),
	}, nil
}

func (c *DeployCmd) Run(ctx context.Context, g *Globals) error {
	opts, err := c.options(g)
	if err != nil {
		return err
	}
	// The pool connects lazily: making it first lets policy checks use it,
	// and nothing is dialled before the plan (and the policy) are sound.
	inv, err := g.inventory(ctx)
	if err != nil {
		return err
	}
	pool, _, err := g.pool(ctx, c.Fleet)
	if err != nil {
		return err
	}
	defer pool.Close()
	pl, err := g.makePlan(ctx, c.Targets, true, poolRunner{pool})
	if err != nil {
		return err
	}
	plan := pl.plan
	if opts.PublicKey, err = g.publicKey(inv); err != nil {
		return err
	}
	sshConfig, cleanup, err := writeSSHConfig(inv, c.Fleet)
	if err != nil {
		return err
	}
	defer cleanup()
	if opts.State, err = g.state(); err != nil {
		return err
	}
	ev, err := g.evaluator()
	if err != nil {
		return err
	}
	view := g.newDeployView(len(plan.Order))
	opts.Events = view.Event
	if pl.policy != nil {
		opts.Policy = newPolicyChecks(pl.policy, inv, pl.waves, plan.Waves)
	}
	copier := &deploy.NixCopier{Nix: ev.Nix, SSHConfig: sshConfig, Sudo: c.Sudo, Privileged: map[string]bool{}}
	for n, in := range inv.Instances {
		copier.Privileged[n] = in.User != "root"
	}
	report := deploy.Execute(ctx, plan, inv, pool, copier, opts)
	view.Close()
	return g.finishReport(report)
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

// planned is a plan with what it was made from.
type planned struct {
	inv     *eval.Inventory
	targets []string
	plan    *deploy.Plan
	policy  *starlark.Policy
	waves   []starlark.Wave
}

// makePlan evaluates, selects, applies the rollout policy, builds (or, for
// plan, only evaluates) and plans. A policy error stops here, before any
// host is touched.
func (g *Globals) makePlan(ctx context.Context, patterns []string, build bool, runner starlark.Runner) (*planned, error) {
	inv, targets, err := g.targets(ctx, patterns)
	if err != nil {
		return nil, err
	}
	pol, err := g.loadPolicy(ctx, runner)
	if err != nil {
		return nil, err
	}
	var waves []starlark.Wave
	var waveList [][]string
	if pol != nil {
		if targets, waves, err = applyPolicy(ctx, pol, inv, targets); err != nil {
			return nil, err
		}
		waveList = waveNames(waves)
	}
	systems := inv.SystemsOf(targets)
	var paths map[string]eval.Built
	if build {
		res, err := g.buildSystems(ctx, inv, systems)
		if err != nil {
			return nil, err
		}
		paths = res.Paths
		var missing []string
		for _, s := range systems {
			if _, ok := paths[s]; !ok {
				missing = append(missing, s)
			}
		}
		if len(missing) > 0 {
			return nil, fmt.Errorf("--no build: no valid build of %s in %s; run without --no build", strings.Join(missing, ", "), g.st.Path())
		}
	} else {
		ev, err := g.evaluator()
		if err != nil {
			return nil, err
		}
		if paths, err = ev.OutPaths(ctx, inv, systems); err != nil {
			return nil, err
		}
	}
	plan, err := deploy.Make(inv, targets, paths, waveList)
	if err != nil {
		return nil, err
	}
	return &planned{inv: inv, targets: targets, plan: plan, policy: pol, waves: waves}, nil
}

// finishReport prints the per-host summary and turns failures into the
// exit status.
func (g *Globals) finishReport(r *deploy.Report) error {
	if g.JSON {
		json.NewEncoder(g.stdout).Encode(struct {
			Type string `json:"type"`
			*deploy.Report
		}{"report", r})
	} else {
		writeSummary(g.stdout, r)
	}
	if u := r.Unknown(); len(u) > 0 {
		fmt.Fprintf(g.stderr, "nix-hive: the outcome of the activation on %s is not known: it may still run there; it finishes on the host, returning to the previous system unless confirmed. `nix-hive status` shows each host's state.\n", strings.Join(u, ", "))
	}
	switch {
	case r.Interrupted:
		return fmt.Errorf("deploy interrupted; see the summary for each host's state: %w", context.Canceled)
	case !r.OK():
		return fmt.Errorf("deploy failed on %d of %d hosts%s", r.NotOK(), len(r.Order), stoppedSuffix(r))
	}
	return nil
}

func stoppedSuffix(r *deploy.Report) string {
	if r.Stopped == "" {
		return ""
	}
	return "; rollout stopped: " + r.Stopped
}

func writeSummary(w io.Writer, r *deploy.Report) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "INSTANCE\tWAVE\tSYSTEM\tSTATUS\tSTEP\tTIME\tDETAIL")
	for _, n := range r.Order {
		res := r.Results[n]
		wave := "-"
		if res.Target {
			wave = fmt.Sprint(res.Wave)
		}
		detail := res.Error
		if detail == "" && len(res.Checks) > 0 {
			detail = strings.Join(res.Checks, "; ")
		}
		if detail == "" && !res.Target {
			detail = "store for other instances"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", n, wave, res.System, res.Status, res.Step,
			res.Duration.Round(100*time.Millisecond), oneLine(detail))
	}
	tw.Flush()
	if r.Stopped != "" {
		fmt.Fprintf(w, "rollout stopped: %s\n", r.Stopped)
	}
}

func oneLine(s string) string {
	s = strings.ReplaceAll(s, "\n", " | ")
	if len(s) > 240 {
		s = s[:237] + "..."
	}
	return s
}
