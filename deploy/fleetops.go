package deploy

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/nix-hive/nix-hive/eval"
)

// StatusRow is one instance's state compared with the hive.
type StatusRow struct {
	Instance string `json:"instance"`
	System   string `json:"system"`
	HostState
	Wanted string `json:"wanted"`
	// Drift is "" when the active system is the wanted one, else a short
	// reason ("active differs", "unreachable: ...").
	Drift string `json:"drift,omitempty"`
	Error string `json:"error,omitempty"`
}

// Status asks every instance in names what it runs, parallel at most
// parallel at once; want maps a system to its wanted path ("" unknown).
func Status(ctx context.Context, remote Remote, inv *eval.Inventory, names []string, want map[string]string, parallel int) []StatusRow {
	rows := make([]StatusRow, len(names))
	each(ctx, names, parallel, func(i int, n string) {
		row := StatusRow{Instance: n, System: inv.Instances[n].System, Wanted: want[inv.Instances[n].System]}
		hs, err := queryHost(ctx, remote, n)
		var qe *queryError
		switch {
		case errors.As(err, &qe):
			row.Error, row.Drift = err.Error(), "unknown"
		case err != nil:
			row.Error, row.Drift = err.Error(), "unreachable"
		default:
			row.HostState = hs
			switch {
			case row.Wanted == "":
				row.Drift = "unknown (system not evaluated)"
			case row.Active != row.Wanted:
				row.Drift = "active system differs"
			case row.Profile != row.Wanted:
				row.Drift = "boot profile differs"
			}
		}
		rows[i] = row
	})
	return rows
}

// RollbackRow is one instance's rollback outcome.
type RollbackRow struct {
	Instance string `json:"instance"`
	Before   string `json:"before"`
	After    string `json:"after"`
	Error    string `json:"error,omitempty"`
}

// Rollback switches each instance to its previous system generation and
// confirms that the previous generation is active.
func Rollback(ctx context.Context, remote Remote, inv *eval.Inventory, names []string, sudo string, parallel int) []RollbackRow {
	rows := make([]RollbackRow, len(names))
	each(ctx, names, parallel, func(i int, n string) {
		row := RollbackRow{Instance: n}
		defer func() { rows[i] = row }()
		before, err := queryHost(ctx, remote, n)
		if err != nil {
			row.Error = err.Error()
			return
		}
		row.Before = before.Active
		after, err := rollbackHost(ctx, remote, n, inv.Instances[n].User, sudo)
		if err != nil {
			row.Error = err.Error()
			return
		}
		row.After = after.Active
		if after.Active != after.Profile {
			row.Error = fmt.Sprintf("after rollback /run/current-system is %s but the profile points at %s", after.Active, after.Profile)
		} else if after.Generation >= before.Generation && before.Generation != 0 {
			row.Error = fmt.Sprintf("profile generation is %d, was %d: no previous generation?", after.Generation, before.Generation)
		}
	})
	return rows
}

// each calls fn for every name with at most parallel calls at once.
func each(ctx context.Context, names []string, parallel int, fn func(i int, n string)) {
	if parallel <= 0 {
		parallel = 16
	}
	sem := make(chan struct{}, parallel)
	var wg sync.WaitGroup
	for i, n := range names {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			fn(i, n)
		}()
	}
	wg.Wait()
}
