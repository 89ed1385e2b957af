package cli

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/alecthomas/kong"

	"github.com/nix-hive/nix-hive/eval"
	"github.com/nix-hive/nix-hive/internal/cmdline"
	"github.com/nix-hive/nix-hive/mux"
	"github.com/nix-hive/nix-hive/nixcmd"
	"github.com/nix-hive/nix-hive/starlark"
	"github.com/nix-hive/nix-hive/state"
	"github.com/nix-hive/nix-hive/transport"
)

// What commands need is made here, once per run and only when a command's
// Run asks for it: kong calls a provider when a Run method (or another
// provider) takes its type.
func providers() []kong.Option {
	return []kong.Option{
		kong.BindSingletonProvider(nixRunner),
		kong.BindSingletonProvider(locate),
		kong.BindSingletonProvider(openHive),
		kong.BindSingletonProvider(openState),
		kong.BindSingletonProvider(loadPolicy),
		kong.BindSingletonProvider(openPool),
	}
}

// providerError marks an error of a provider, so that the message printed
// is the provider's own, not kong's wrapping with type names.
type providerError struct{ err error }

func (e providerError) Error() string { return e.err.Error() }
func (e providerError) Unwrap() error { return e.err }

func provided[T any](v T, err error) (T, error) {
	if err != nil {
		return v, providerError{err}
	}
	return v, nil
}

func nixRunner(g *Globals) *nixcmd.Runner {
	return &nixcmd.Runner{Stderr: g.stderr, Prefix: "nix: ", Verbose: g.Verbose, ShowTrace: g.ShowTrace, TraceHint: "nix-hive --show-trace"}
}

// locate finds the hive; none where -c points is a usage error (2), as a
// wrong path on any command line is.
func locate(g *Globals) (eval.Source, error) {
	src, err := eval.Locate(g.Config)
	if err != nil {
		err = cmdline.UsageError{Err: err}
	}
	return provided(src, err)
}

func openHive(ctx context.Context, g *Globals, src eval.Source, nix *nixcmd.Runner) (*eval.Hive, error) {
	return provided(eval.Open(ctx, src, nix, func(msg string) { g.warnf("%s", msg) }))
}

func openState(g *Globals, src eval.Source) (*state.File, error) {
	path := g.State
	if path == "" {
		path = src.StatePath()
	}
	return provided(state.Load(path))
}

// loadPolicy loads --policy, else hive.star beside the hive; nil when
// there is none (one wave, every host attempted).
func loadPolicy(ctx context.Context, g *Globals, r *Rollout, src eval.Source) (*starlark.Policy, error) {
	file := r.Policy
	if file == "" {
		file = filepath.Join(src.Dir, "hive.star")
		if _, err := os.Stat(file); errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
	}
	if _, err := os.Stat(file); err != nil {
		return provided[*starlark.Policy](nil, fmt.Errorf("policy: %w", err))
	}
	env := starlark.Env{Log: func(instance, msg string) {
		who := "policy"
		if instance != "" {
			who = instance
		}
		fmt.Fprintf(g.logWriter(), "%s: %s\n", who, msg)
	}}
	return provided(starlark.Load(ctx, file, nil, env))
}

// newPool makes a pool of cfg for the hive h, the one way commands make
// one: a problem with the hive's endpoints is the hive's (exit status 2),
// named with its file, and the pool's warnings are shown.
func newPool(g *Globals, h *eval.Hive, cfg transport.Config) (*transport.Pool, error) {
	p, err := transport.NewPool(cfg)
	if err != nil {
		return nil, eval.InHive(fmt.Errorf("%s: %w", h.Src.File, err))
	}
	for _, w := range p.Hosts().Warnings() {
		g.warnf("%s", w)
	}
	return p, nil
}

// holderCommand is how a holder is run: this program's `mux serve`
// (MuxServeCmd), which mux.Ensure starts in the background.
func holderCommand() (mux.Command, error) {
	exe, err := os.Executable()
	if err != nil {
		return mux.Command{}, fmt.Errorf("mux: find nix-hive: %w", err)
	}
	return mux.Command{Path: exe, Args: []string{"nix-hive", "mux", "serve"}}, nil
}

// ensureHolder is mux.Ensure with this program's holder.
func ensureHolder(cfg transport.Config, idle time.Duration) (sock string, pid int, err error) {
	cmd, err := holderCommand()
	if err != nil {
		return "", 0, err
	}
	return mux.Ensure(cfg, idle, cmd)
}

// startHolder is a Config.StartHolder: the pool calls it when it is about
// to connect to its first host, so a command that connects to none
// starts no holder. The holder then keeps the connections this command
// makes for the next ones, as ControlPersist does; started says whether
// it is this command's, held is the way to it. Starting it is said once,
// since it outlives the command.
func startHolder(g *Globals, cfg transport.Config, persist time.Duration, held *atomic.Pointer[mux.Client], started *atomic.Bool) func() transport.Holder {
	return func() transport.Holder {
		sock, pid, err := ensureHolder(cfg, persist)
		switch {
		case err != nil:
			g.warnf("%v; connecting directly", err)
			return nil
		case pid != 0:
			started.Store(true)
			fmt.Fprintf(g.stderr, "nix-hive: mux: started connection holder pid %d; it keeps this hive's connections until %s pass unused (nix-hive mux stop ends it, --mux-persist 0 starts none)\n", pid, persist)
		}
		m, err := mux.Dial(sock, cfg.ConnectTimeout)
		if err != nil {
			g.warnf("%v; connecting to each host directly", err)
			return nil
		}
		held.Store(m)
		return m
	}
}

// openPool makes the connection pool for the hive (connections are made
// on first use, one per host); it is closed when the command ends. It
// goes through the hive's holder, if one runs, else starts one when it
// first connects (--mux-persist), unless --no-mux.
func openPool(g *Globals, h *eval.Hive, st *state.File, f *Fleet) (*transport.Pool, error) {
	cfg := f.transportConfig(h, st)
	cfg.BatchMode = true // the OpenSSH config for nix copy has no one to ask for a password
	var held atomic.Pointer[mux.Client]
	var started atomic.Bool
	var unanswered error // a running holder that did not answer, said after the pool's warnings
	if !f.NoMux {
		switch sock, err := mux.Running(cfg); {
		case err != nil:
			g.warnf("%v; connecting directly", err)
		case sock != "":
			m, err := mux.Dial(sock, cfg.ConnectTimeout)
			if err != nil {
				unanswered = err
				break
			}
			held.Store(m)
			cfg.Holder = m
		case f.MuxPersist > 0:
			cfg.StartHolder = startHolder(g, cfg, f.MuxPersist, &held, &started)
		}
	}
	p, err := newPool(g, h, cfg)
	if err != nil {
		if m := held.Load(); m != nil {
			m.Close()
		}
		return provided[*transport.Pool](nil, err)
	}
	if unanswered != nil {
		g.warnf("%v; connecting to each host directly", unanswered)
	}
	var before mux.Info
	if m := held.Load(); m != nil && g.Verbose {
		before, _ = m.Info()
	}
	g.onClose(func() {
		m := held.Load()
		if m != nil && started.Load() {
			// A holder this command started that got no connection (every
			// host unreachable) keeps nothing for the next one.
			if info, err := m.Info(); err == nil && info.Connected == 0 {
				m.Stop()
			}
		}
		if m != nil && g.Verbose {
			// The holder's count, not the pool's: its connections are
			// what the command cost the hosts' sshd.
			if after, err := m.Info(); err == nil {
				st := p.Stats()
				fmt.Fprintf(g.stderr, "ssh: through mux pid %d: %d new connections, %d sessions, %d hosts' state read"+
					" (sessions: %d exec, %d sftp; sftp requests: %d of this command's, %d of the holder's)\n",
					after.Pid, after.Handshakes-before.Handshakes, st.Sessions, after.Reads-before.Reads,
					st.Exec, st.SFTP, st.SFTPRequests, after.SFTPRequests-before.SFTPRequests)
			}
		}
		p.Close()
		if st := p.Stats(); g.Verbose && st.Direct+st.Tunnelled > 0 {
			// What the command cost the hosts' sshd, for operators
			// sizing MaxStartups and for bench/fleet.
			// The text up to "sessions" is what bench/fleet and the
			// tests match; what follows was added after them.
			fmt.Fprintf(g.stderr, "ssh: %d connections (%d direct, %d through jump hosts or ProxyCommand), %d sessions"+
				" (%d exec, %d sftp), %d sftp requests, at most %d connections to one host, %d keepalives\n",
				st.Direct+st.Tunnelled, st.Direct, st.Tunnelled, st.Sessions, st.Exec, st.SFTP, st.SFTPRequests, maxDials(st.Dials), st.KeepAlives)
		}
	})
	return p, nil
}

// maxDials is the most connections started to one instance.
func maxDials(dials map[string]int) int {
	n := 0
	for _, d := range dials {
		n = max(n, d)
	}
	return n
}
