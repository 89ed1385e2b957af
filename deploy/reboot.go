package deploy

import (
	"context"
	"errors"

	"github.com/nix-hive/nix-hive/host"
)

// reboot restarts host n after a boot activation, waits (up to
// RebootTimeout) for it to come back, and checks it booted the wanted
// system. A reboot is recognised by a mark left in /run (which every boot
// clears) or a new kernel boot id.
func (p *pipeline) reboot(ctx context.Context, n string) error {
	path := p.plan.Hosts[n].OutPath
	before, err := host.Query(ctx, p.remote, n)
	if err != nil {
		return failed(StepReboot, err)
	}
	p.journal.step(n, StepReboot, EventStart, "")
	mark, err := host.Reboot(ctx, p.remote, p.inv.Instances[n], p.opts.Connection.Privilege)
	if err != nil {
		return failed(StepReboot, err)
	}
	hs, err := host.AwaitReboot(ctx, p.remote, n, mark, before.BootID, p.opts.Activation.RebootTimeout, p.opts.Connection.ConnectTimeout)
	switch {
	case errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded):
		return unknown(StepReboot, err) // stopped waiting: the host may still come back
	case err != nil:
		return failed(StepReboot, err)
	}
	p.journal.update(n, func(r *Result) { r.Active = hs.Active })
	if hs.Active != path {
		return failedf(StepReboot, "the host booted %q, want %s", hs.Active, path)
	}
	p.journal.step(n, StepReboot, EventOK, "booted "+path)
	return nil
}
