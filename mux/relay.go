package mux

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"

	"golang.org/x/crypto/ssh"

	"github.com/nix-hive/nix-hive/transport"
)

// Relay serves a command's own pool to the programs the command runs:
// the ssh that `nix copy` starts (SSH, through SSHScript) asks it for a
// session on an instance and gets one on the connection the command
// already holds, instead of logging in again. A push to a store thus
// costs the store a session, not a third handshake, and its login, jump
// hosts and pinned keys are the pool's.
//
// It speaks the holder's protocol on a socket in a directory of the
// command's own, to this user's processes only, and never closes the
// pool, which stays the command's.
type Relay struct {
	s      *Server
	ln     *net.UnixListener
	path   string
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// NewRelay listens at path (which must not exist; its directory should
// be private) and serves pool's instances there, by instance name or
// by the alias transport.Alias gives it, until Close.
func NewRelay(pool *transport.Pool, path string) (*Relay, error) {
	signer, err := newHostKey()
	if err != nil {
		return nil, fmt.Errorf("relay: %w", err)
	}
	aliases := map[string]string{}
	for _, n := range pool.Hosts().Names() {
		aliases[transport.Alias(n)] = n
	}
	s := &Server{pool: pool, hostKey: signer, log: func(string, ...any) {}, relayOnly: true, aliases: aliases,
		active: make(chan struct{}, 1), stop: make(chan struct{})}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("relay: %w", err)
	}
	ln.SetUnlinkOnClose(true)
	if err := os.Chmod(path, 0o600); err == nil {
		err = os.WriteFile(path+".pub", ssh.MarshalAuthorizedKey(signer.PublicKey()), 0o600)
	}
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("relay: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &Relay{s: s, ln: ln, path: path, cancel: cancel}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		r.serve(ctx)
	}()
	return r, nil
}

// Socket is where the relay listens.
func (r *Relay) Socket() string { return r.path }

func (r *Relay) serve(ctx context.Context) {
	for {
		c, err := r.ln.AcceptUnix()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || ctx.Err() != nil {
				return
			}
			continue
		}
		if uid, err := peerUID(c); err != nil || uid != os.Getuid() {
			c.Close()
			continue
		}
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			r.s.serveClient(ctx, c)
		}()
	}
}

// Close stops listening and ends the sessions it relays; the pool's
// connections stay open.
func (r *Relay) Close() error {
	r.cancel()
	err := r.ln.Close()
	os.Remove(r.path + ".pub")
	r.wg.Wait()
	return err
}
