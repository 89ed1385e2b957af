package deploy

import (
	"context"
	"time"

	"github.com/nix-hive/nix-hive/eval"
	"github.com/nix-hive/nix-hive/host"
	"github.com/nix-hive/nix-hive/keys"
	"github.com/nix-hive/nix-hive/state"
	"github.com/nix-hive/nix-hive/transport"
)

// Options tune an execution, in parts that other operations share: a
// rollback takes an Activation and a Connection, a keys upload a
// Connection. The command line builds each part once.
type Options struct {
	Activation Activation
	Connection Connection
	Steps      Steps
	Record     Record
	// Policy, when set, runs checks and may stop the rollout; without one
	// every host is attempted. Deploy and ApplyLocal set it from the
	// prepared plan's policy.
	Policy Policy
	// RollbackSucceeded (deploy --rollback-succeeded, or the policy's
	// rollback_succeeded): when a target fails, no further host starts
	// and every host this deploy changed returns to what it ran before,
	// the latest wave first, each confirmed as an activation is.
	RollbackSucceeded bool
	// Abort, when closed, stops waiting for running activations (a
	// second Ctrl-C); they finish on the hosts.
	Abort <-chan struct{}

	// What Deploy and ApplyLocal add before they execute: the hive's
	// signing key, for consumers' command lines (Steps.TrustKey); the
	// keys' uploader (nil: no keys, --no keys); and whether the one host
	// is this machine (apply-local: its closure is here already, and its
	// commands run without SSH).
	publicKey string
	uploader  *keys.Uploader
	local     bool
}

// uploadsKeys reports whether a deploy with o uploads keys to in.
func (o Options) uploadsKeys(in *eval.Instance) bool {
	return o.uploader != nil && len(in.Keys) > 0 && o.Activation.Goal != host.GoalDryActivate
}

func (o Options) withDefaults() Options {
	o.Activation, o.Connection = o.Activation.withDefaults(), o.Connection.withDefaults()
	return o
}

// The defaults of Activation's timeouts: what a zero value means, and
// what the command line's flags default to (cli's tests hold them to
// these).
const (
	DefaultActivationTimeout = 30 * time.Minute
	DefaultConfirmTimeout    = 30 * time.Second
	DefaultRebootTimeout     = 10 * time.Minute
)

// Activation is how hosts are activated: by a deploy and apply-local, and
// by a rollback, which is a switch too (Goal, Force and Reboot do not
// apply to it).
type Activation struct {
	Goal host.Goal // "": switch
	// Force activates hosts that already run the wanted system.
	Force bool
	// MagicRollback arms a watchdog on the host for switch and test: the
	// host returns to what it ran before unless nix-hive confirms over a
	// new SSH connection within ConfirmTimeout.
	MagicRollback  bool
	ConfirmTimeout time.Duration
	// ActivationTimeout bounds one switch-to-configuration.
	ActivationTimeout time.Duration
	// Reboot, with host.GoalBoot, reboots each host after activation and
	// waits up to RebootTimeout for it to come back on the new system.
	Reboot        bool
	RebootTimeout time.Duration
	// BootFallback, with Reboot, boots the new system once and keeps the
	// one that runs now the boot loader's default until the new one has
	// come back and answered (host.PrepareBootFallback). A host whose
	// boot loader cannot do that fails before anything changes, unless
	// Force, which reboots it without the fallback.
	BootFallback bool
}

func (a Activation) withDefaults() Activation {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	if a.Goal == "" {
		a.Goal = host.GoalSwitch
	}
	def(&a.ActivationTimeout, DefaultActivationTimeout)
	def(&a.ConfirmTimeout, DefaultConfirmTimeout)
	def(&a.RebootTimeout, DefaultRebootTimeout)
	return a
}

// watchdog is the confirmation window of a job for goal: ConfirmTimeout
// with magic rollback for the goals that change what runs now (switch,
// test); 0, none, otherwise.
func (a Activation) watchdog(goal host.Goal) time.Duration {
	if a.MagicRollback && goal.Activates() {
		return a.ConfirmTimeout
	}
	return 0
}

// Connection is how hosts are reached and worked on: a deploy, a
// rollback and a keys upload share it.
type Connection struct {
	// ConnectTimeout is the transport's bound for connecting; contact with
	// a host may be lost for ConfirmTimeout+ConnectTimeout during an
	// activation before its outcome is declared unknown.
	ConnectTimeout time.Duration
	// Parallel is how many hosts are worked on at once (0: AutoParallel
	// of a deploy's plan; fanout's default elsewhere).
	Parallel int
	// Privilege is how non-root logins become root (nil: they cannot).
	Privilege *host.Privilege
	// Owner says who deploys, for hosts' deploy locks.
	Owner string
	// Files, when set, reads a host's state files where that is cheaper
	// than a session (through a connection holder, whose sftp sessions
	// outlive the command): a deploy's target seen already running what
	// the deploy would leave it running, with no deploy holding it and no
	// activation running, is left alone without taking its deploy lock.
	Files func(ctx context.Context, name string) (host.Files, error)
}

func (c Connection) withDefaults() Connection {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.ConnectTimeout, transport.DefaultConnectTimeout)
	if c.Owner == "" {
		c.Owner = "nix-hive"
	}
	return c
}

// newJobs runs a's activation jobs over remote, becoming root with c's
// privilege (the job runner's timing: host.Timing).
func newJobs(remote host.Remote, a Activation, c Connection, local bool, notify func(string, host.Notice, string)) *host.Jobs {
	t := host.Timing{Activation: a.ActivationTimeout, Confirm: a.ConfirmTimeout, Connect: c.ConnectTimeout}
	return host.NewJobs(remote, c.Privilege, t, local, notify)
}

// Steps say which of a deploy's optional steps run, and how.
type Steps struct {
	SkipPush bool // --no push
	SkipKeys bool // --no keys: no key is uploaded
	// TrustKey passes the hive's public key on the consumers' command line
	// instead of relying on their nix.conf.
	TrustKey bool
	// KeyTimeout bounds a key's command that has no timeout of its own
	// (0: keys.DefaultTimeout).
	KeyTimeout time.Duration
}

// Record is where an execution tells what happened: every event as it
// happens, and each host's outcome in hive.state (nil: not recorded).
type Record struct {
	State  *state.File
	Events func(Event)
}
