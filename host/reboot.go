package host

import (
	"context"
	"fmt"
	"time"

	"github.com/nix-hive/nix-hive/eval"
)

// rebootProgram MARK leaves MARK in /run (which a reboot clears) and
// reboots a second later, so this command returns before the connection
// goes down.
const rebootProgram = `umask 022
mkdir -p /run/nix-hive && printf '%s\n' "$1" >/run/nix-hive/reboot || exit 2
setsid sh -c 'sleep 1; if [ -d /run/systemd/system ]; then systemctl reboot; else reboot; fi' </dev/null >/dev/null 2>&1 &
echo rebooting
`

// Reboot leaves a mark in /run on host in, which every boot clears, and
// reboots it (as root, with priv); it returns the mark once the host said
// it reboots, a moment before its connection goes down.
func Reboot(ctx context.Context, remote Remote, in *eval.Instance, priv *Privilege) (mark string, err error) {
	mark = newID()
	out := &lockedBuffer{}
	code, err := remote.Run(ctx, in.Name, asRoot(in, priv, rebootProgram, mark), nil, out, out)
	if err == nil && code != 0 {
		err = fmt.Errorf("reboot exited %d: %s", code, lastLines(out.String(), 3))
	}
	return mark, err
}

// AwaitReboot polls host n over new connections, each query bounded by
// twice connect, until it answers from a new boot: without mark (which
// Reboot left), or with another kernel boot id than bootID. It gives up
// after timeout, and stops waiting when ctx ends (its error then wraps
// ctx's).
func AwaitReboot(ctx context.Context, remote Remote, n, mark, bootID string, timeout, connect time.Duration) (State, error) {
	deadline := time.Now().Add(timeout)
	var last error
	for {
		// The pooled connection died with the old boot, or is about to;
		// a real reboot may leave it silently dead, so never reuse it.
		remote.Reset(n)
		if err := pause(ctx, time.Second); err != nil {
			return State{}, fmt.Errorf("stopped waiting for the reboot: %w", err)
		}
		qctx, cancel := context.WithTimeout(ctx, 2*connect)
		hs, err := Query(qctx, remote, n)
		cancel()
		if err == nil && (hs.RebootMark != mark || hs.BootID != bootID) {
			return hs, nil
		}
		last = err
		if time.Now().After(deadline) {
			if last == nil {
				// It answers, from the boot it was asked to leave.
				return State{}, fmt.Errorf("did not reboot within %s: it still answers from the same boot (boot id %s, the reboot's mark still in /run)", timeout, bootID)
			}
			return State{}, fmt.Errorf("did not come back from the reboot within %s (last: %v)", timeout, last)
		}
	}
}
