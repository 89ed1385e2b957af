package deploy

import (
	"context"

	"github.com/nix-hive/nix-hive/host"
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
	if opts.publicKey, err = prep.Hive.PublicKey(); err != nil {
		return nil, err
	}
	if !opts.Steps.SkipPush {
		// Consumers require signatures; without a hive key they would fail
		// one by one, each with advice that cannot help.
		if err := prep.Unsigned(); err != nil {
			return nil, err
		}
	}
	copier, err := NewNixCopier(nix, pool, prep.Hive.Inventory, opts.Connection.Privilege)
	if err != nil {
		return nil, err
	}
	defer copier.Close()
	return execute(ctx, prep, pool, copier, opts)
}

// execute runs the plan through h, with the policy's checks and the
// hive's keys.
func execute(ctx context.Context, prep *plan.Prepared, h host.Hosts, copier Copier, opts Options) (*Report, error) {
	var err error
	h = opts.Connection.Privilege.Hosts(h)
	if prep.Policy != nil {
		opts.Policy = prep.Checks(host.Commands{Remote: h})
	}
	if !opts.Steps.SkipKeys {
		if opts.uploader, err = keys.NewUploader(ctx, prep.Hive, h, prep.Plan.Targets, opts.Connection.Privilege, opts.Steps.KeyTimeout); err != nil {
			return nil, err
		}
	}
	return Execute(ctx, prep.Plan, prep.Hive.Inventory, h, copier, opts), nil
}
