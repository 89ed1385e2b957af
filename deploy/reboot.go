package deploy

import (
	"context"
	"errors"
	"fmt"

	"github.com/nix-hive/nix-hive/host"
)

// bootLoader is host n's boot loader for the boot fallback of a
// --reboot deploy, asked before anything changes there: "" when the
// deploy does not fall back (no --reboot, --no-boot-fallback, or --force
// on a host whose boot loader cannot), a failed host when it cannot and
// the deploy was not forced.
func (p *pipeline) bootLoader(ctx context.Context, n string) (string, error) {
	a := p.opts.Activation
	if !a.Reboot || !a.BootFallback {
		return "", nil
	}
	loader, err := host.DetectBootLoader(ctx, p.remote, p.inv.Instances[n], p.opts.Connection.Privilege)
	var none *host.NoBootLoader
	switch {
	case errors.As(err, &none) && a.Force:
		p.journal.step(n, StepReboot, EventInfo, err.Error()+"; --force: rebooting without it")
		return "", nil
	case errors.As(err, &none):
		return "", failedf(StepReboot, "%v: a boot that fails would not come back; nothing changed (--force reboots without the fallback)", err)
	case err != nil:
		return "", failed(StepReboot, err)
	}
	return loader, nil
}

// reboot restarts host n after job's boot activation, waits (up to
// RebootTimeout) for it to come back, and checks it booted the wanted
// system. A reboot is recognised by a mark left in /run (which every boot
// clears) or a new kernel boot id.
//
// With a boot loader (the boot fallback), the new system boots once and
// running, the system that runs now, stays the default: a host that
// comes back on the new system makes it the default; one that does not
// come back in time is waited for as long again, for the boot its
// watchdog (or an operator's power cycle) makes into the default. When it
// comes back on another system, its profile and default are made that
// system's again and the host is rolled back.
//
// Its changes run under actx, as activations do; the waits for the host
// only watch, so Ctrl-C (ctx) ends them too, and the host is unknown.
func (p *pipeline) reboot(ctx, actx context.Context, n, job, running, loader string) error {
	path := p.plan.Hosts[n].OutPath
	in, priv := p.inv.Instances[n], p.opts.Connection.Privilege
	timeout, connect := p.opts.Activation.RebootTimeout, p.opts.Connection.ConnectTimeout
	before, err := host.Query(actx, p.remote, n)
	if err != nil {
		return failed(StepReboot, err)
	}
	p.journal.step(n, StepReboot, EventStart, "")
	if loader != "" {
		bl, err := host.PrepareBootFallback(actx, p.remote, in, priv, path, running)
		if err != nil {
			// The activation made the new system the default: undo it
			// rather than reboot without a way back.
			return p.rollback(actx, n, job, fmt.Errorf("boot fallback: %w", err))
		}
		p.journal.step(n, StepReboot, EventInfo, fmt.Sprintf("%s: the next boot starts %s once; %s stays the default", bl.Name, bl.Next, bl.Default))
	}
	mark, err := host.Reboot(actx, p.remote, in, priv)
	if err != nil {
		return failed(StepReboot, err)
	}
	wctx, stop := context.WithCancel(actx)
	defer stop()
	defer context.AfterFunc(ctx, stop)()
	hs, err := host.AwaitReboot(wctx, p.remote, n, mark, before.BootID, timeout, connect)
	if err != nil && loader != "" && wctx.Err() == nil {
		p.journal.step(n, StepReboot, EventInfo, fmt.Sprintf("%v; waiting up to %s more for its next boot (a watchdog's or a power cycle's), which starts %s", err, timeout, running))
		var again error
		if hs, again = host.AwaitReboot(wctx, p.remote, n, mark, before.BootID, timeout, connect); again != nil && wctx.Err() == nil {
			return rolledBack(StepReboot, fmt.Errorf("rolled back (boot), unconfirmed: %s did not come up within %s and the host has not answered since; its next boot starts %s, the default", path, timeout, running))
		}
		err = again
	}
	switch {
	case (errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)) && loader != "":
		return unknown(StepReboot, fmt.Errorf("%w; the host may still come back: a boot it starts now runs %s once, and every boot after it %s, the default", err, path, running))
	case errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded):
		return unknown(StepReboot, err) // stopped waiting: the host may still come back
	case err != nil:
		return failed(StepReboot, err)
	}
	p.journal.update(n, func(r *Result) { r.Active = hs.Active })
	if hs.Active != path && loader != "" {
		return p.bootRolledBack(actx, n, job, path, hs.Active)
	}
	if hs.Active != path {
		return failedf(StepReboot, "the host booted %q, want %s", hs.Active, path)
	}
	msg := "booted " + path
	if loader != "" {
		entry, err := host.SetBootDefault(actx, p.remote, in, priv, path)
		if err != nil {
			return failed(StepReboot, fmt.Errorf("booted %s, but it is not the boot loader's default (the next boot starts %s): %w", path, running, err))
		}
		msg += "; its entry " + entry + " is the default"
		if !p.checks.has("post") {
			// Booted and answering: the activation is good (the policy's
			// post-check marks it otherwise).
			if err := p.checks.mark(actx, n, job, "ok"); err != nil {
				return err
			}
		}
	}
	p.journal.step(n, StepReboot, EventOK, msg)
	return nil
}

// bootRolledBack settles host n after its boot fallback: path, which job
// activated, did not boot, and the host came back on booted. The host
// records job's activation as failed, so that no rollback takes its
// generation for good; then the system profile and the boot default
// become booted's again, so that neither the host's records nor its
// next boot say otherwise. (Job's own record of what ran before it was
// in /run, which the reboot emptied: booted is what runs, and the
// profiles are those the host recorded when the deploy locked it.)
func (p *pipeline) bootRolledBack(ctx context.Context, n, job, path, booted string) error {
	why := fmt.Errorf("rolled back (boot): %s did not come up; the host booted %s, the default", path, booted)
	p.journal.step(n, StepRollback, EventStart, why.Error())
	if err := p.checks.mark(ctx, n, job, "failed"); err != nil {
		return failed(StepRollback, fmt.Errorf("%v; recording it: %w", why, err))
	}
	// The profiles beside the system one go back to those the host had
	// when the deploy locked it (set, not activated: goal boot).
	was, _ := p.locks.state(n)
	st, err := p.jobs.Run(ctx, p.inv.Instances[n], host.Job{Goal: host.GoalBoot, Target: booted, Gzip: p.locks.hasGzip(n), Profiles: was.ProfileList()})
	if err != nil {
		return unknown(StepRollback, fmt.Errorf("%v; making it the system profile again: %w", why, err))
	}
	if err := st.Err(); err != nil {
		return failed(StepRollback, fmt.Errorf("%v; making it the system profile again failed: %w", why, err))
	}
	if _, err := host.SetBootDefault(ctx, p.remote, p.inv.Instances[n], p.opts.Connection.Privilege, booted); err != nil {
		return failed(StepRollback, fmt.Errorf("%v; making it the boot default again: %w", why, err))
	}
	p.journal.step(n, StepRollback, EventOK, "the system profile and the boot loader's default are "+booted+" again")
	return rolledBack(StepReboot, why)
}
