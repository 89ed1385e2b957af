package deploy

import (
	"context"
	"time"

	"github.com/nix-hive/nix-hive/eval"
	"github.com/nix-hive/nix-hive/keys"
	"github.com/nix-hive/nix-hive/nixcmd"
	"github.com/nix-hive/nix-hive/plan"
	"github.com/nix-hive/nix-hive/transport"
)

// Deploy carries out a prepared plan: closures leave through nix copy with
// the pool's OpenSSH configuration, everything else goes over the pool,
// policy checks included.
func Deploy(ctx context.Context, prep *plan.Prepared, pool *transport.Pool, nix *nixcmd.Runner, opts Options) (*Report, error) {
	var err error
	if opts.PublicKey, err = prep.Hive.PublicKey(); err != nil {
		return nil, err
	}
	if !opts.SkipPush {
		// Consumers require signatures; without a hive key they would fail
		// one by one, each with advice that cannot help.
		if err := prep.Unsigned(); err != nil {
			return nil, err
		}
	}
	copier, err := NewNixCopier(nix, pool, prep.Hive.Inventory, opts.Privilege)
	if err != nil {
		return nil, err
	}
	defer copier.Close()
	return execute(ctx, prep, pool, copier, opts)
}

// Hosts is what a deploy needs of its way to the hosts: commands (with
// policy checks among them) and key uploads.
type Hosts interface {
	Remote
	keys.Host
}

// execute runs the plan through h, with the policy's checks and the
// hive's keys.
func execute(ctx context.Context, prep *plan.Prepared, h Hosts, copier Copier, opts Options) (*Report, error) {
	var err error
	h = opts.Privilege.Hosts(h)
	if prep.Policy != nil {
		opts.Policy = prep.Checks(remoteRunner{h})
	}
	if !opts.SkipKeys {
		if opts.Keys, err = NewKeys(ctx, prep.Hive, h, prep.Plan.Targets, opts.Privilege, opts.KeyTimeout); err != nil {
			return nil, err
		}
	}
	return Execute(ctx, prep.Plan, prep.Hive.Inventory, h, copier, opts), nil
}

// NewKeys is the uploader of the hive's keys over pool; the text keys of
// targets are evaluated now, in one go. A key's command without a timeout
// of its own is stopped after timeout (0: keys.DefaultTimeout).
func NewKeys(ctx context.Context, h *eval.Hive, hosts keys.Host, targets []string, priv *Privilege, timeout time.Duration) (*keys.Uploader, error) {
	if timeout <= 0 {
		timeout = keys.DefaultTimeout
	}
	v := keys.NewValues(h, timeout)
	var withText []string
	for _, t := range targets {
		for _, k := range h.Inventory.Instances[t].Keys {
			if k.Source == "text" {
				withText = append(withText, t)
				break
			}
		}
	}
	if len(withText) > 0 {
		if err := v.LoadTexts(ctx, withText); err != nil {
			return nil, err
		}
	}
	return &keys.Uploader{Host: hosts, Values: v, Root: priv.Root}, nil
}

// remoteRunner lets ctx.run use the deploy's connections.
type remoteRunner struct{ remote Remote }

func (r remoteRunner) Run(ctx context.Context, instance, cmd string) (string, string, int, error) {
	var o, e lockedBuffer
	code, err := r.remote.Run(ctx, instance, cmd, nil, &o, &e)
	return o.String(), e.String(), code, err
}
