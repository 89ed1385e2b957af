package deploy

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/nix-hive/nix-hive/eval"
	"github.com/nix-hive/nix-hive/host"
	"github.com/nix-hive/nix-hive/transport"
)

// Watcher asks the same hosts what they run, round after round (status
// --watch), over connections it keeps: its Remote must not be Reset
// between rounds. Where it can, it reads a host's state as files over the
// host's sftp session, which starts no process on the host: a round then
// costs each host a few sftp requests, where a status costs a connection,
// a session and the query's processes. It asks with the shell query when
// the host has no sftp, when the session fails, and when only flock can
// tell whether an activation runs.
type Watcher struct {
	Remote host.Remote
	// Files returns the reader over the instance's sftp session, opening
	// the session on first use.
	Files func(ctx context.Context, name string) (host.Files, error)

	noFiles sync.Map // instance -> true: its sftp failed where a shell worked
}

// PoolFiles is a Watcher's Files over pool's sftp sessions: one per host,
// opened on first use and kept with the host's pooled connection, or the
// connection holder's (nix-hive mux), which outlive the command.
func PoolFiles(pool *transport.Pool) func(context.Context, string) (host.Files, error) {
	return pool.Files
}

// Inspect is one round: Inspect's rows, from the state files where they
// can tell it.
func (w *Watcher) Inspect(ctx context.Context, inv *eval.Inventory, names []string, want map[string]eval.Built, parallel int) []StatusRow {
	return inspect(ctx, inv, names, want, parallel, w.query)
}

func (w *Watcher) query(ctx context.Context, n string) (host.State, error) {
	if _, shellOnly := w.noFiles.Load(n); !shellOnly && w.Files != nil {
		hs, exact, err := w.readFiles(ctx, n)
		switch {
		case err == nil && exact:
			return hs, nil
		case ctx.Err() != nil:
			return host.State{}, ctx.Err()
		case errors.Is(err, context.DeadlineExceeded):
			// No answer within the connect timeout: the shell query would
			// wait as long again for the same silence.
			return host.State{}, err
		case err != nil:
			// A dropped connection fails both; the shell query redials it.
			hs, qerr := host.Query(ctx, w.Remote, n)
			if qerr == nil {
				if _, ferr := w.Files(ctx, n); ferr != nil {
					w.noFiles.Store(n, true) // the host answers, its sftp does not
				}
			}
			return hs, qerr
		}
		// Read, but inexact: the query's flock says whether a job runs.
	}
	return host.Query(ctx, w.Remote, n)
}

// readFiles reads n's state through its sftp session, bounded by ctx:
// sftp requests take no context, and one to a host that went silent ends
// only when keepalives close its connection.
func (w *Watcher) readFiles(ctx context.Context, n string) (hs host.State, exact bool, err error) {
	f, err := w.Files(ctx, n)
	if err != nil {
		return host.State{}, false, err
	}
	type result struct {
		hs    host.State
		exact bool
		err   error
	}
	ch := make(chan result, 1)
	go func() {
		hs, exact, _, err := host.ReadState(f, false)
		ch <- result{hs, exact, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			return host.State{}, false, fmt.Errorf("read state of %s over sftp: %w", n, r.err)
		}
		return r.hs, r.exact, nil
	case <-ctx.Done():
		return host.State{}, false, ctx.Err()
	}
}
