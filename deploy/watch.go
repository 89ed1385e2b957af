package deploy

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/nix-hive/nix-hive/eval"
	"github.com/nix-hive/nix-hive/transport"
)

// HostFiles reads a host's links and small files without starting a
// process there: over an sftp session held open, the pool's or a
// connection holder's.
type HostFiles = transport.FileReader

// Watcher asks the same hosts what they run, round after round (status
// --watch), over connections it keeps: its Remote must not be Reset
// between rounds. Where it can, it reads a host's state as files over the
// host's sftp session, which starts no process on the host: a round then
// costs each host a few sftp requests, where a status costs a connection,
// a session and the query's processes. It asks with the shell query when
// the host has no sftp, when the session fails, and when only flock can
// tell whether an activation runs.
type Watcher struct {
	Remote Remote
	// Files returns the reader over the instance's sftp session, opening
	// the session on first use.
	Files func(ctx context.Context, name string) (HostFiles, error)

	noFiles sync.Map // instance -> true: its sftp failed where a shell worked
}

// PoolFiles is a Watcher's Files over pool's sftp sessions: one per host,
// opened on first use and kept with the host's pooled connection, or the
// connection holder's (nix-hive mux), which outlive the command.
func PoolFiles(pool *transport.Pool) func(context.Context, string) (HostFiles, error) {
	return pool.Files
}

// Inspect is one round: Inspect's rows, from the state files where they
// can tell it.
func (w *Watcher) Inspect(ctx context.Context, inv *eval.Inventory, names []string, want map[string]string, parallel int) []StatusRow {
	return inspect(ctx, inv, names, want, parallel, w.query)
}

func (w *Watcher) query(ctx context.Context, n string) (HostState, error) {
	if _, shellOnly := w.noFiles.Load(n); !shellOnly && w.Files != nil {
		hs, exact, err := w.readFiles(ctx, n)
		switch {
		case err == nil && exact:
			return hs, nil
		case ctx.Err() != nil:
			return HostState{}, ctx.Err()
		case errors.Is(err, context.DeadlineExceeded):
			// No answer within the connect timeout: the shell query would
			// wait as long again for the same silence.
			return HostState{}, err
		case err != nil:
			// A dropped connection fails both; the shell query redials it.
			hs, qerr := queryHost(ctx, w.Remote, n)
			if qerr == nil {
				if _, ferr := w.Files(ctx, n); ferr != nil {
					w.noFiles.Store(n, true) // the host answers, its sftp does not
				}
			}
			return hs, qerr
		}
		// Read, but inexact: the query's flock says whether a job runs.
	}
	return queryHost(ctx, w.Remote, n)
}

// readFiles reads n's state through its sftp session, bounded by ctx:
// sftp requests take no context, and one to a host that went silent ends
// only when keepalives close its connection.
func (w *Watcher) readFiles(ctx context.Context, n string) (hs HostState, exact bool, err error) {
	f, err := w.Files(ctx, n)
	if err != nil {
		return HostState{}, false, err
	}
	type result struct {
		hs    HostState
		exact bool
		err   error
	}
	ch := make(chan result, 1)
	go func() {
		hs, exact, err := readHostState(f)
		ch <- result{hs, exact, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			return HostState{}, false, fmt.Errorf("read state of %s over sftp: %w", n, r.err)
		}
		return r.hs, r.exact, nil
	case <-ctx.Done():
		return HostState{}, false, ctx.Err()
	}
}

// stateReads are the reads of readHostState's first batch: what
// queryProgram prints, under the same keys.
var stateReads = []struct{ key, op, path string }{
	{"active", "readlink", "/run/current-system"},
	{"link", "readlink", profile},
	{"profile", "resolve", profile},
	{"last", "firstline", "/nix/var/nix-hive/last"},
	{"boot", "firstline", "/proc/sys/kernel/random/boot_id"},
	{"rebootmark", "firstline", "/run/nix-hive/reboot"},
}

// readHostState reads what queryProgram prints, file by file, and parses
// it the same way. exact is false when the state files leave open whether
// an activation runs, which only the activation lock can tell: the lock
// exists and the job /run/nix-hive/current names has not written a final
// state (a job writes "done ..." last, still holding the lock).
func readHostState(f HostFiles) (hs HostState, exact bool, err error) {
	hs, exact, _, err = readState(f, false)
	return hs, exact, err
}

// readState is readHostState, in one batch of reads (two while a job's
// lock exists); with owner it also says whether a deploy owner file
// exists, that is whether a deploy may hold the host.
func readState(f HostFiles, owner bool) (hs HostState, exact, held bool, err error) {
	qs := make([]transport.FileQuery, 0, len(stateReads)+3)
	for _, r := range stateReads {
		qs = append(qs, transport.FileQuery{Op: r.op, Path: r.path})
	}
	qs = append(qs, transport.FileQuery{Op: "exists", Path: "/run/nix-hive/activation.lock"},
		transport.FileQuery{Op: "firstline", Path: "/run/nix-hive/current"})
	if owner {
		qs = append(qs, transport.FileQuery{Op: "exists", Path: deployOwner})
	}
	a, err := f.Batch(qs)
	if err != nil {
		return HostState{}, false, false, err
	}
	var b strings.Builder
	for i, r := range stateReads {
		if v := a[i].S; v != "" {
			fmt.Fprintf(&b, "%s=%s\n", r.key, v)
		}
	}
	n := len(stateReads)
	held = owner && a[n+2].B
	if locked, id := a[n].B, a[n+1].S; locked {
		if id == "" || strings.ContainsAny(id, "/") || id == "." || id == ".." {
			return HostState{}, false, held, nil
		}
		st, err := f.Batch([]transport.FileQuery{{Op: "firstline", Path: "/run/nix-hive/jobs/" + id + "/state"}})
		if err != nil {
			return HostState{}, false, false, err
		}
		if !strings.HasPrefix(st[0].S, "done") {
			return HostState{}, false, held, nil
		}
	}
	return parseHostState(b.String()), true, held, nil
}
