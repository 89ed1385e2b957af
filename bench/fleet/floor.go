package main

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync/atomic"

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
	var failed atomic.Int64
	var first atomic.Value
	b.around(ctx, r, func() error {
		fanout.Each(ctx, len(b.lab.Hosts), floorParallel, func(ctx context.Context, i int) {
			h := b.lab.Hosts[i]
			if _, err := pool.Client(ctx, h.Name); err != nil {
				failed.Add(1)
				first.CompareAndSwap(nil, err)
				return
			}
			if !jumps[h.Name] {
				pool.Reset(h.Name) // as status does: no connection outlives its host
			}
		})
		if n := failed.Load(); n > 0 {
			return fmt.Errorf("%d connections failed, e.g. %w", n, first.Load().(error))
		}
		return ctx.Err()
	})
	direct, tunnelled := pool.Handshakes()
	r.sshConns = direct + tunnelled
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
