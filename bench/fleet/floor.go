package main

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync/atomic"

	"github.com/nix-hive/nix-hive/deploy"
	"github.com/nix-hive/nix-hive/eval"
	"github.com/nix-hive/nix-hive/fanout"
	"github.com/nix-hive/nix-hive/lab"
	"github.com/nix-hive/nix-hive/transport"
)

// floorParallel is status's default --parallel: the floor dials as many
// hosts at once as status asks.
const floorParallel = 32

// measureFloor times what any tool that opens an SSH connection per host
// pays before it runs anything: one connection to every host, through
// the same jump chains and with nix-hive's own client (transport.Pool),
// closed again at once, with no session. status and the no-op redeploy
// cannot cost less than this, whatever they do on the hosts; comparing
// them with it says how much of their time is the connections themselves.
func (b *bench) measureFloor(ctx context.Context, r *row) {
	pool, err := transport.NewPool(floorConfig(b.lab))
	if err != nil {
		r.err = err
		return
	}
	defer pool.Close()
	jumps := map[string]bool{}
	for _, h := range b.lab.Hosts {
		if h.Jump != "" {
			jumps[h.Jump] = true
		}
	}
	b.around(ctx, r, func() error {
		return eachHost(ctx, b.lab.Hosts, func(ctx context.Context, h *lab.Host) error {
			if _, err := pool.Client(ctx, h.Name); err != nil {
				return err
			}
			if !jumps[h.Name] {
				pool.Reset(h.Name) // as status does: no connection outlives its host
			}
			return nil
		})
	})
	st := pool.Stats()
	r.sshConns = st.Direct + st.Tunnelled
	if r.err == nil && r.sshConns < len(b.lab.Hosts) {
		r.err = errors.New("fewer SSH handshakes than hosts")
	}
}

// floorConfig is the lab as transport endpoints, the way lab.nix gives it
// to the hive: address, pinned host key, jump host and the client key.
func floorConfig(l *lab.Lab) transport.Config {
	eps := map[string]transport.Endpoint{}
	for _, h := range l.Hosts {
		eps[h.Name] = transport.Endpoint{
			Host: h.Addr, Port: h.Port, User: "root", HostKeys: []string{h.HostKey}, Jump: h.Jump,
			Options: map[string]string{"IdentityFile": l.ClientKey, "IdentitiesOnly": "yes"},
		}
	}
	return transport.Config{Endpoints: eps, KnownHostsFiles: []string{}, UserConfig: "none", BatchMode: true,
		AcceptedKnownHosts: filepath.Join(l.Dir, "floor_known_hosts")}
}

// measureHeld times a later round of status --watch: nix-hive's own
// deploy.Watcher, run in this process on a pool that already holds a
// connection and an sftp session to every host (the first round, which
// opens them, is not timed). A round reads each host's state as files
// over sftp and starts no process on the host; every host's active
// system must be what the last deploy put there.
func (b *bench) measureHeld(ctx context.Context, r *row) {
	pool, err := transport.NewPool(floorConfig(b.lab))
	if err != nil {
		r.err = err
		return
	}
	defer pool.Close()
	inv := &eval.Inventory{Instances: map[string]*eval.Instance{}}
	names := make([]string, len(b.lab.Hosts))
	for i, h := range b.lab.Hosts {
		names[i] = h.Name
		inv.Instances[h.Name] = &eval.Instance{Name: h.Name, System: "web"}
	}
	w := &deploy.Watcher{Remote: pool, Files: deploy.PoolFiles(pool)}
	round := func() error {
		var bad []string
		for i, row := range w.Inspect(ctx, inv, names, nil, floorParallel) {
			if want := b.outPath(b.lab.Hosts[i]); row.Error != "" || row.Active != want {
				bad = append(bad, fmt.Sprintf("%s: active %q, want %q (%s)", row.Instance, row.Active, want, row.Error))
			}
		}
		if len(bad) > 0 {
			return fmt.Errorf("%d hosts answered wrong, e.g. %s", len(bad), bad[0])
		}
		return ctx.Err()
	}
	if r.err = round(); r.err != nil {
		return
	}
	st0 := pool.Stats()
	b.around(ctx, r, round)
	st1 := pool.Stats()
	r.sshConns = st1.Direct + st1.Tunnelled - st0.Direct - st0.Tunnelled
	r.sessions = st1.Sessions - st0.Sessions
}

// eachHost runs fn for every host, floorParallel at once, and reports how
// many failed with the first error.
func eachHost(ctx context.Context, hosts []*lab.Host, fn func(context.Context, *lab.Host) error) error {
	var failed atomic.Int64
	var first atomic.Value
	fanout.Each(ctx, len(hosts), floorParallel, func(ctx context.Context, i int) {
		if err := fn(ctx, hosts[i]); err != nil {
			failed.Add(1)
			first.CompareAndSwap(nil, err)
		}
	})
	if n := failed.Load(); n > 0 {
		return fmt.Errorf("%d of %d hosts failed, e.g. %w", n, len(hosts), first.Load().(error))
	}
	return ctx.Err()
}
