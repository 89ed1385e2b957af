package deploy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"time"

	"github.com/nix-hive/nix-hive/eval"
	"github.com/nix-hive/nix-hive/fanout"
	"github.com/nix-hive/nix-hive/host"
	"github.com/nix-hive/nix-hive/keys"
	"github.com/nix-hive/nix-hive/plan"
	"github.com/nix-hive/nix-hive/state"
)

// StatusRow is one instance's state compared with the hive.
type StatusRow struct {
	Instance string `json:"instance"`
	System   string `json:"system"`
	host.State
	Wanted string `json:"wanted"`
	// Specialisation is the specialisation of Wanted the instance runs:
	// the hive's, or the one the host's last activation of Wanted chose
	// (deploy --specialisation).
	Specialisation string `json:"specialisation,omitempty"`
	// WantedProfiles are the profiles beside the system one the hive
	// wants there, as the host records them (host.ProfileWords).
	WantedProfiles string `json:"wantedProfiles,omitempty"`
	// Drift is "" when the active system is the wanted one, else a short
	// reason ("active differs", "unreachable: ...").
	Drift string `json:"drift,omitempty"`
	Error string `json:"error,omitempty"`
	// Address is, for an instance with several, the address its
	// connection reached (the first that answered).
	Address string `json:"address,omitempty"`
}

// Inspect asks every instance in names what it runs, parallel at most
// parallel at once; want maps a system to its wanted build (none:
// unknown).
func Inspect(ctx context.Context, remote host.Remote, inv *eval.Inventory, names []string, want map[string]eval.Built, parallel int) []StatusRow {
	jumps := jumpHosts(inv)
	return inspect(ctx, inv, names, want, parallel, func(ctx context.Context, n string) (host.State, error) {
		hs, err := host.Query(ctx, remote, n)
		if !jumps[n] {
			remote.Release(n) // done with it: no keepalives, no memory held
		}
		return hs, err
	})
}

func inspect(ctx context.Context, inv *eval.Inventory, names []string, want map[string]eval.Built, parallel int,
	query func(context.Context, string) (host.State, error)) []StatusRow {
	rows := make([]StatusRow, len(names))
	for i, n := range names {
		sys := inv.Instances[n].System
		rows[i] = StatusRow{Instance: n, System: sys, Wanted: want[sys].OutPath,
			Specialisation: inv.Instances[n].Specialisation, Drift: "unknown", Error: "not asked: interrupted"}
		if ps, err := inv.BuiltProfiles(sys, want[sys]); err == nil {
			rows[i].WantedProfiles = host.ProfileWords(ps)
		}
	}
	fanout.Each(ctx, len(names), parallel, func(ctx context.Context, i int) {
		row := &rows[i]
		row.Error, row.Drift = "", ""
		hs, err := query(ctx, row.Instance)
		var qe *host.QueryError
		switch {
		case errors.As(err, &qe):
			row.Error, row.Drift = err.Error(), "unknown"
		case err != nil:
			row.Error, row.Drift = err.Error(), "unreachable"
		default:
			row.State = hs
			row.Drift = row.drift()
		}
	})
	return rows
}

// jumpHosts are the instances others are reached through: their pooled
// connections carry others' and stay open while the command runs.
func jumpHosts(inv *eval.Inventory) map[string]bool {
	jumps := map[string]bool{}
	for _, in := range inv.Instances {
		if in.Jump != "" {
			jumps[in.Jump] = true
		}
	}
	return jumps
}

// drift says how the row's host differs from what it should run, and
// settles the specialisation it should run.
func (r *StatusRow) drift() string {
	hs, wanted := r.State, r.Wanted
	if r.Specialisation == "" && hs.Last != nil && hs.Last.Path == wanted && hs.Last.Specialisation != "" && hs.Profile == wanted {
		r.Specialisation = hs.Last.Specialisation
	}
	active := wanted
	if r.Specialisation != "" && wanted != "" {
		s, err := plan.SpecialisationOf(wanted, r.Specialisation)
		if err != nil {
			return "unknown (specialisation " + r.Specialisation + " of the wanted system is not in this machine's store)"
		}
		active = s
	}
	switch {
	case hs.Running != "":
		return "activation running (job " + hs.Running + ")"
	case wanted == "":
		return "unknown (system not evaluated)"
	case hs.Active != active:
		return "active system differs"
	case hs.Profile != wanted:
		return "boot profile differs"
	case hs.Profiles != r.WantedProfiles:
		return "profiles differ"
	case hs.Last != nil && hs.Last.Path == wanted && hs.Last.Status == "activated":
		return "checks of the last activation did not finish"
	case hs.Last != nil && hs.Last.Path == wanted && hs.Last.Status != "ok":
		return "last activation " + hs.Last.Status
	}
	return ""
}

// RollbackOptions tune Rollback.
type RollbackOptions struct {
	// Activation and Connection mean what they mean for a deploy: a
	// rollback is a switch too (Goal, Force and Reboot do not apply).
	Activation Activation
	Connection Connection
	// State, if set, records each host the rollback changed (what it runs
	// after it), as a deploy records its hosts; the caller saves it.
	State *state.File
}

// RollbackRow is one instance's rollback outcome.
type RollbackRow struct {
	Instance string `json:"instance"`
	Before   string `json:"before"`
	After    string `json:"after"`
	Error    string `json:"error,omitempty"`
}

// Rollback switches each instance to the previous generation of its
// system profile, as a detached activation job under the host's deploy
// lock (with magic rollback, confirmed like a deploy), and confirms that
// the previous generation is active.
func Rollback(ctx context.Context, remote host.Remote, inv *eval.Inventory, names []string, o RollbackOptions) []RollbackRow {
	act, conn := o.Activation.withDefaults(), o.Connection.withDefaults()
	remote = conn.Privilege.Remote(remote)
	j := newJobs(remote, act, conn, false, nil)
	rows := make([]RollbackRow, len(names))
	for i, n := range names {
		rows[i] = RollbackRow{Instance: n, Error: "not started: interrupted"}
	}
	fanout.Each(ctx, len(names), conn.Parallel, func(ctx context.Context, i int) {
		rows[i] = rollbackOne(ctx, remote, j, inv.Instances[names[i]], act, conn)
		recordRollback(o.State, inv.Instances[names[i]], rows[i])
	})
	return rows
}

// recordRollback records in st what host in runs after its rollback, when
// the rollback changed it (a host it could not lock, or where it found no
// good generation, keeps its record): ok with the system it returned to,
// or failed, which plan --offline does not take for known.
func recordRollback(st *state.File, in *eval.Instance, r RollbackRow) {
	if st == nil || r.Before == "" || (r.Error != "" && r.After == r.Before) {
		return
	}
	rec := state.Instance{System: in.System, OutPath: r.After, Goal: string(host.GoalSwitch), Step: string(StepRollback),
		Status: string(StatusOK), Error: r.Error, Before: r.Before, Time: time.Now().UTC()}
	if r.Error != "" {
		rec.Status = string(StatusFailed)
	}
	if prev, ok := st.Instance(in.Name); ok {
		rec.Stored = prev.Stored
	}
	st.SetInstance(in.Name, rec)
}

func rollbackOne(ctx context.Context, remote host.Remote, j *host.Jobs, in *eval.Instance, act Activation, conn Connection) RollbackRow {
	row := RollbackRow{Instance: in.Name}
	l, before, err := host.Lock(ctx, remote, in, conn.Privilege, conn.Owner, nil)
	if err != nil {
		row.Error = err.Error()
		return row
	}
	defer l.Release(ctx)
	row.Before = before.Active
	job := host.Job{Goal: host.GoalSwitch, Target: host.Previous, Confirm: act.watchdog(host.GoalSwitch), Gzip: before.Gzip}
	st, err := j.Run(ctx, in, job)
	if err == nil {
		err = st.Err()
	}
	after, qerr := host.Query(ctx, remote, in.Name)
	row.After = after.Active
	switch {
	case err != nil:
		row.Error = err.Error()
	case qerr != nil:
		row.Error = qerr.Error()
	case after.Active != after.Profile:
		row.Error = fmt.Sprintf("after rollback /run/current-system is %s but the profile points at %s", after.Active, after.Profile)
	case after.Generation >= before.Generation && before.Generation != 0:
		row.Error = fmt.Sprintf("profile generation is %d, was %d", after.Generation, before.Generation)
	}
	return row
}

// KeysRow is one instance's key upload.
type KeysRow struct {
	Instance string   `json:"instance"`
	Keys     []string `json:"keys"`
	Error    string   `json:"error,omitempty"`
}

// UploadKeys uploads every key of each instance in names, under the host's
// deploy lock, taken as conn says; a key that cannot be had fails its host
// before anything is written there.
func UploadKeys(ctx context.Context, remote host.Remote, inv *eval.Inventory, names []string, up *keys.Uploader, conn Connection) []KeysRow {
	conn = conn.withDefaults()
	remote = conn.Privilege.Remote(remote)
	rows := make([]KeysRow, len(names))
	for i, n := range names {
		rows[i] = KeysRow{Instance: n, Error: "not started: interrupted"}
	}
	fanout.Each(ctx, len(names), conn.Parallel, func(ctx context.Context, i int) {
		in := inv.Instances[names[i]]
		row := KeysRow{Instance: in.Name, Keys: slices.Sorted(maps.Keys(in.Keys))}
		defer func() { rows[i] = row }()
		if len(in.Keys) == 0 {
			return
		}
		l, _, err := host.Lock(ctx, remote, in, conn.Privilege, conn.Owner, nil)
		if err == nil {
			defer l.Release(ctx)
			var b *keys.Batch
			if b, err = up.PrepareAll(ctx, in); err == nil {
				err = b.Upload(ctx, "")
			}
		}
		if err != nil {
			row.Error = err.Error()
		}
	})
	return rows
}

// CommandRow is how a command ended on one host: its exit status, or Err
// when it could not run (or was stopped).
type CommandRow struct {
	Instance string
	Code     int
	Err      error
}

// RunCommand runs cmd (a shell command line, quoted by the caller) on
// every instance in names, parallel at most at once, each stopped after
// timeout (0: no limit). output gives a host's writers and a function
// called when its command has ended (to flush a last partial line).
func RunCommand(ctx context.Context, remote host.Remote, names []string, cmd string, parallel int, timeout time.Duration,
	output func(name string) (stdout, stderr io.Writer, done func())) []CommandRow {
	rows := make([]CommandRow, len(names))
	for i, n := range names {
		rows[i] = CommandRow{Instance: n, Code: -1, Err: fmt.Errorf("not started: %w", context.Canceled)}
	}
	fanout.Each(ctx, len(names), parallel, func(ctx context.Context, i int) {
		stdout, stderr, done := output(names[i])
		if timeout > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, timeout)
			defer cancel()
		}
		code, err := remote.Run(ctx, names[i], cmd, nil, stdout, stderr)
		done()
		if err != nil && timeout > 0 && errors.Is(ctx.Err(), context.DeadlineExceeded) {
			err = fmt.Errorf("stopped after --timeout %s", timeout)
		}
		rows[i] = CommandRow{Instance: names[i], Code: code, Err: err}
	})
	return rows
}
