package main

import (
	"context"
	"errors"
	"fmt"
	"io"
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

// measureHeld times what status would cost a process that already holds
// a connection and an sftp session to every host (a ControlPersist-like
// keeper, which nix-hive does not have): one round of the reads status
// needs (both system links, the generation the profile points at, the
// last outcome and the boot id) as sftp requests, which start no process
// on the host. Connecting and starting sftp are done first and not timed.
// Every host's active system is checked against what the last deploy put
// there, so the reads are real. It is a study for the design decision in
// docs/scale.md, not a measurement of nix-hive.
func (b *bench) measureHeld(ctx context.Context, r *row) {
	pool, err := transport.NewPool(floorConfig(b.lab))
	if err != nil {
		r.err = err
		return
	}
	defer pool.Close()
	hosts := b.lab.Hosts
	if r.err = eachHost(ctx, hosts, func(ctx context.Context, h *lab.Host) error {
		_, err := pool.SFTP(ctx, h.Name)
		return err
	}); r.err != nil {
		return
	}
	d0, t0 := pool.Handshakes()
	b.around(ctx, r, func() error {
		return eachHost(ctx, hosts, func(ctx context.Context, h *lab.Host) error {
			active, err := heldQuery(ctx, pool, h.Name)
			if err != nil {
				return err
			}
			if want := b.outPath(h); active != want {
				return fmt.Errorf("%s: /run/current-system is %q, the last deploy made it %q", h.Name, active, want)
			}
			return nil
		})
	})
	d1, t1 := pool.Handshakes()
	r.sshConns = d1 + t1 - d0 - t0
}

// heldQuery reads over the host's pooled sftp session what status reads
// with a shell and returns the active system.
func heldQuery(ctx context.Context, pool *transport.Pool, name string) (string, error) {
	s, err := pool.SFTP(ctx, name)
	if err != nil {
		return "", err
	}
	active, err := s.ReadLink("/run/current-system")
	if err != nil {
		return "", fmt.Errorf("%s: %w", name, err)
	}
	const profiles = "/nix/var/nix/profiles/"
	gen, err := s.ReadLink(profiles + "system")
	if err != nil {
		return "", fmt.Errorf("%s: %w", name, err)
	}
	if _, err := s.ReadLink(profiles + gen); err != nil {
		return "", fmt.Errorf("%s: %w", name, err)
	}
	for _, p := range []string{"/nix/var/nix-hive/last", "/proc/sys/kernel/random/boot_id"} {
		f, err := s.Open(p)
		if err != nil {
			continue // status reports a missing file as an empty value
		}
		_, err = io.Copy(io.Discard, f)
		f.Close()
		if err != nil {
			return "", fmt.Errorf("%s: read %s: %w", name, p, err)
		}
	}
	return active, nil
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
