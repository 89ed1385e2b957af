package deploy

import (
	"context"
	"fmt"
	"time"
)

// reboot restarts host n after a boot activation, waits (up to
// RebootTimeout) for it to come back, and checks it booted the wanted
// system. A reboot is recognised by a mark left in /run (which every boot
// clears) or a new kernel boot id.
func (e *executor) reboot(ctx context.Context, n string) error {
	path := e.plan.Hosts[n].OutPath
	before, err := queryHost(ctx, e.remote, n)
	if err != nil {
		return failed(StepReboot, err)
	}
	mark := newJobID()
	e.step(n, StepReboot, EventStart, "")
	out := &lockedBuffer{}
	code, err := e.remote.Run(ctx, n, program(rebootProgram, true, e.inv.Instances[n].User, e.sudo(n), mark), nil, out, out)
	if err == nil && code != 0 {
		err = fmt.Errorf("reboot exited %d: %s", code, lastLines(out.String(), 3))
	}
	if err != nil {
		return failed(StepReboot, err)
	}
	hs, err := e.awaitReboot(ctx, n, mark, before.BootID)
	if err != nil {
		return err
	}
	e.update(n, func(r *Result) { r.Active = hs.Active })
	if hs.Active != path {
		return failedf(StepReboot, "the host booted %q, want %s", hs.Active, path)
	}
	e.step(n, StepReboot, EventOK, "booted "+path)
	return nil
}

// awaitReboot polls host n over new connections until it answers from a
// new boot.
func (e *executor) awaitReboot(ctx context.Context, n, mark, bootID string) (HostState, error) {
	deadline := time.Now().Add(e.opts.RebootTimeout)
	var last error
	for {
		// The pooled connection died with the old boot, or is about to;
		// a real reboot may leave it silently dead, so never reuse it.
		e.remote.Reset(n)
		if err := pause(ctx, time.Second); err != nil {
			return HostState{}, unknown(StepReboot, fmt.Errorf("stopped waiting for the reboot: %w", err))
		}
		qctx, cancel := context.WithTimeout(ctx, 2*e.opts.ConnectTimeout)
		hs, err := queryHost(qctx, e.remote, n)
		cancel()
		if err == nil && (hs.RebootMark != mark || hs.BootID != bootID) {
			return hs, nil
		}
		if err != nil {
			last = err
		}
		if time.Now().After(deadline) {
			return HostState{}, failedf(StepReboot, "did not come back from the reboot within %s (last: %v)", e.opts.RebootTimeout, last)
		}
	}
}
