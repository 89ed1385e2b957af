package deploy

import (
	"context"
	"fmt"
	"strings"
	"sync"

	"github.com/nix-hive/nix-hive/eval"
	"github.com/nix-hive/nix-hive/transport"
)

// HostFiles reads a host's links and small files without starting a
// process there (transport.Reader, over an sftp session held open). Each
// method returns "" or false, with a nil error, where the host says the
// path cannot be read that way; an error means the session failed.
type HostFiles interface {
	Readlink(p string) (string, error)
	// Resolve follows every link of p, "" if what it names is missing.
	Resolve(p string) (string, error)
	Exists(p string) (bool, error)
	FirstLine(p string) (string, error)
}

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
	return func(ctx context.Context, name string) (HostFiles, error) {
		f, err := pool.Files(ctx, name)
		if err != nil {
			return nil, err
		}
		return f, nil
	}
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

// readHostState reads what queryProgram prints, file by file, and parses
// it the same way. exact is false when the state files leave open whether
// an activation runs, which only the activation lock can tell: the lock
// exists and the job /run/nix-hive/current names has not written a final
// state (a job writes "done ..." last, still holding the lock).
func readHostState(f HostFiles) (hs HostState, exact bool, err error) {
	var b strings.Builder
	var firstErr error
	get := func(key string, read func(string) (string, error), p string) string {
		v, err := read(p)
		if err != nil && firstErr == nil {
			firstErr = err
		}
		if key != "" && v != "" {
			fmt.Fprintf(&b, "%s=%s\n", key, v)
		}
		return v
	}
	get("active", f.Readlink, "/run/current-system")
	get("link", f.Readlink, profile)
	get("profile", f.Resolve, profile)
	get("last", f.FirstLine, "/nix/var/nix-hive/last")
	get("boot", f.FirstLine, "/proc/sys/kernel/random/boot_id")
	get("rebootmark", f.FirstLine, "/run/nix-hive/reboot")
	locked, err := f.Exists("/run/nix-hive/activation.lock")
	if firstErr == nil {
		firstErr = err
	}
	if firstErr != nil {
		return HostState{}, false, firstErr
	}
	if locked {
		id := get("", f.FirstLine, "/run/nix-hive/current")
		if id == "" || strings.ContainsAny(id, "/") || id == "." || id == ".." {
			return HostState{}, false, firstErr
		}
		state := get("", f.FirstLine, "/run/nix-hive/jobs/"+id+"/state")
		if firstErr != nil || !strings.HasPrefix(state, "done") {
			return HostState{}, false, firstErr
		}
	}
	return parseHostState(b.String()), true, nil
}
