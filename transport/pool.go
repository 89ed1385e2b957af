package transport

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"
)

// maxSessions is OpenSSH's default MaxSessions: more concurrent sessions on
// one connection are refused by sshd, so callers beyond it wait for a slot.
const maxSessions = 10

// Pool holds at most one SSH connection per endpoint and shares it between
// every command, shell and sftp client of a run; a jump host's connection
// carries all the hosts behind it. It is safe for concurrent use.
type Pool struct {
	hosts *Hosts // how each instance is reached; hosts.cfg is the pool's Config

	ctx    context.Context // cancelled by Close; parent of every dial
	cancel context.CancelFunc
	wg     sync.WaitGroup // dials, watchers and keepalives
	// kills are pending process-group kills of cancelled commands; Close
	// lets them finish so a cancelled command does not outlive the run.
	kills sync.WaitGroup

	holder *holderLink  // the holder every connection goes through, if any
	conns  *connections // the connections the sessions below are opened on

	sessions atomic.Int64 // sessions opened: commands, shells, sftp, relayed
	execs    atomic.Int64 // of those, for commands and shells
	sftps    atomic.Int64 // of those, sftp subsystems
	// sftpRequests counts the packets written on the pool's sftp
	// sessions (see modeWriter).
	sftpRequests atomic.Int64
}

// NewPool validates the endpoints (names, addresses, pinned keys, options,
// jump references and cycles), reads the user's ssh config for defaults
// (its Hosts) and returns an empty pool; connections are made on first
// use.
func NewPool(cfg Config) (*Pool, error) {
	hosts, err := newHosts(cfg)
	if err != nil {
		return nil, err
	}
	p := &Pool{hosts: hosts, holder: newHolderLink(cfg)}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	p.conns = &connections{
		hosts:   hosts,
		holder:  p.holder,
		ctx:     p.ctx,
		track:   p.goTracked,
		live:    map[string]*conn{},
		dialing: map[string]*dialCall{},
		dials:   map[string]int{},
	}
	return p, nil
}

// Hosts is how the pool reaches and checks each instance.
func (p *Pool) Hosts() *Hosts { return p.hosts }

// Stats is what a pool has cost the hosts so far.
type Stats struct {
	// Dials counts the connections started to each instance (successful
	// or not); with pooling it stays at 1 per host for a run unless a
	// connection died.
	Dials map[string]int
	// Direct and Tunnelled count the SSH connections established: over a
	// TCP connection of this machine's, and through a jump host's
	// connection or a ProxyCommand (pooled ones and RunFresh's alike).
	// Their sum is what a fleet-wide command costs the hosts' sshd.
	Direct, Tunnelled int
	// Connected is how many instances the pool holds a connection to now.
	Connected int
	// Sessions counts the SSH sessions opened: commands, shells, sftp,
	// and those OpenChannel opened for a holder's clients.
	Sessions int
	// Exec and SFTP split Sessions: sessions that ran a command or a
	// shell (Run, Shell, RunFresh, a cancelled command's kill), and sftp
	// subsystem sessions. What OpenChannel relays for a holder's
	// clients is in neither: the holder cannot tell what a client runs
	// on a session; the client counts it in its own pool.
	Exec, SFTP int
	// SFTPRequests counts the packets the pool's sftp clients sent (the
	// version handshake included): a request each.
	SFTPRequests int
	// KeepAlives counts the keepalive@openssh.com probes sent: each costs
	// the uplink a packet each way (and its acknowledgement) on every
	// layer of tunnelling.
	KeepAlives int
}

// Stats reports the pool's counts so far.
func (p *Pool) Stats() Stats {
	st := p.conns.stats()
	st.Sessions = int(p.sessions.Load())
	st.Exec, st.SFTP = int(p.execs.Load()), int(p.sftps.Load())
	st.SFTPRequests = int(p.sftpRequests.Load())
	return st
}

// Client returns the pooled connection to an instance, dialing it (and its
// jump hosts) on first use. Concurrent callers share one dial; each waits
// only as long as its own ctx allows. The client belongs to the pool: do
// not Close it.
func (p *Pool) Client(ctx context.Context, name string) (*ssh.Client, error) {
	c, err := p.conns.get(ctx, name)
	if err != nil {
		return nil, err
	}
	return c.client, nil
}

// session opens a session on the pooled connection, holding one of its
// session slots until release is called. A connection that turns out to
// be dead is evicted and redialed once; nothing has run on it yet, so the
// retry is safe.
func (p *Pool) session(ctx context.Context, name string) (c *conn, s *ssh.Session, release func(), err error) {
	for attempt := 0; ; attempt++ {
		c, err := p.conns.get(ctx, name)
		if err != nil {
			return nil, nil, nil, err
		}
		select {
		case c.sessions <- struct{}{}:
		case <-ctx.Done():
			return nil, nil, nil, fmt.Errorf("open session on %s: %w", name, ctx.Err())
		}
		release := func() { <-c.sessions }
		s, err := p.newSession(ctx, c.client)
		if err == nil {
			return c, s, release, nil
		}
		release()
		if ctx.Err() != nil {
			return nil, nil, nil, fmt.Errorf("open session on %s: %w", name, ctx.Err())
		}
		var oce *ssh.OpenChannelError
		if errors.As(err, &oce) || attempt > 0 {
			// The server refused the session; the connection is fine.
			return nil, nil, nil, fmt.Errorf("open session on %s: %w", name, err)
		}
		p.conns.evict(c)
		c.client.Close()
	}
}

// OpenChannel opens a channel of any type on the instance, as a holder
// (package mux) relays it: on the pooled connection (a session holding
// one of its slots, redialing once a connection found dead, like
// session) or, when fresh, on a connection made for it. release gives
// back what it held; call it once the channel is closed.
func (p *Pool) OpenChannel(ctx context.Context, name string, fresh bool, typ string, data []byte) (ssh.Channel, <-chan *ssh.Request, func(), error) {
	if fresh {
		client, err := p.conns.fresh(ctx, name)
		if err != nil {
			return nil, nil, nil, err
		}
		ch, reqs, err := p.channelWithin(ctx, client, typ, data)
		if err != nil {
			client.Close()
			return nil, nil, nil, err
		}
		return ch, reqs, func() { client.Close() }, nil
	}
	for attempt := 0; ; attempt++ {
		c, err := p.conns.get(ctx, name)
		if err != nil {
			return nil, nil, nil, err
		}
		release := func() {}
		if typ == "session" {
			select {
			case c.sessions <- struct{}{}:
			case <-ctx.Done():
				return nil, nil, nil, fmt.Errorf("open session on %s: %w", name, ctx.Err())
			}
			release = func() { <-c.sessions }
		}
		ch, reqs, err := p.channelWithin(ctx, c.client, typ, data)
		if err == nil {
			c.inUse.Add(1)
			return ch, reqs, func() { c.inUse.Add(-1); release() }, nil
		}
		release()
		var oce *ssh.OpenChannelError
		if errors.As(err, &oce) {
			return nil, nil, nil, err
		}
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			// No answer in time: a connection a NAT or firewall forgot
			// while it was idle goes silent rather than failing. The
			// next open redials instead of waiting on it again.
			p.conns.evict(c)
			c.client.Close()
		}
		if attempt > 0 || ctx.Err() != nil {
			return nil, nil, nil, err
		}
		p.conns.evict(c)
		c.client.Close()
	}
}

// channelWithin is client.OpenChannel bounded by ctx; a channel that
// arrives after ctx ended is closed.
func (p *Pool) channelWithin(ctx context.Context, client *ssh.Client, typ string, data []byte) (ssh.Channel, <-chan *ssh.Request, error) {
	type result struct {
		ch   ssh.Channel
		reqs <-chan *ssh.Request
		err  error
	}
	res := make(chan result, 1)
	p.goTracked(func() {
		ch, reqs, err := client.OpenChannel(typ, data)
		if err == nil && typ == "session" {
			p.sessions.Add(1)
		}
		res <- result{ch, reqs, err}
	})
	select {
	case r := <-res:
		return r.ch, r.reqs, r.err
	case <-ctx.Done():
		p.goTracked(func() {
			if r := <-res; r.ch != nil {
				go ssh.DiscardRequests(r.reqs)
				r.ch.Close()
			}
		})
		return nil, nil, fmt.Errorf("open %s channel: %w", typ, ctx.Err())
	}
}

// newSession is ssh.Client.NewSession bounded by ctx, for a command or a
// shell; a session that arrives after ctx ended is closed.
func (p *Pool) newSession(ctx context.Context, client *ssh.Client) (*ssh.Session, error) {
	type result struct {
		s   *ssh.Session
		err error
	}
	ch := make(chan result, 1)
	p.goTracked(func() {
		s, err := client.NewSession()
		if err == nil {
			p.sessions.Add(1)
			p.execs.Add(1)
		}
		ch <- result{s, err}
	})
	select {
	case r := <-ch:
		return r.s, r.err
	case <-ctx.Done():
		p.goTracked(func() {
			if r := <-ch; r.s != nil {
				r.s.Close()
			}
		})
		return nil, ctx.Err()
	}
}

// goTracked runs fn in a goroutine that Close waits for. Every goroutine
// the pool starts goes through here, so none outlives Close.
func (p *Pool) goTracked(fn func()) {
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		fn()
	}()
}

// SFTP returns the instance's sftp client, one per pooled connection,
// created on first use. It belongs to the pool: do not Close it. If it
// ends (or its connection dies) the next call makes a new one.
func (p *Pool) SFTP(ctx context.Context, name string) (*SFTP, error) {
	for attempt := 0; ; attempt++ {
		c, err := p.conns.get(ctx, name)
		if err != nil {
			return nil, err
		}
		select {
		case c.sftpMu <- struct{}{}:
		case <-ctx.Done():
			return nil, fmt.Errorf("sftp to %s: %w", name, ctx.Err())
		}
		if c.sftp != nil {
			select {
			case <-c.sftpDone:
				c.sftp = nil
			default:
				sc := c.sftp
				<-c.sftpMu
				return sc, nil
			}
		}
		sc, err := p.startSFTP(ctx, c)
		<-c.sftpMu
		if err == nil {
			return sc, nil
		}
		select {
		case <-c.done:
			if attempt == 0 {
				continue // the connection died under us: redial once
			}
		default:
		}
		return nil, err
	}
}

// startSFTP runs the sftp subsystem on c; the caller holds c.sftpMu.
func (p *Pool) startSFTP(ctx context.Context, c *conn) (*SFTP, error) {
	select {
	case c.sessions <- struct{}{}:
	case <-ctx.Done():
		return nil, fmt.Errorf("sftp to %s: %w", c.name, ctx.Err())
	}
	ch := make(chan sftpSession, 1)
	p.goTracked(func() { ch <- openSFTP(c.client, &p.sftpRequests) })
	var r sftpSession
	select {
	case r = <-ch:
	case <-ctx.Done():
		p.goTracked(func() {
			if r := <-ch; r.sc != nil {
				r.sc.Close()
				r.s.Close()
			}
			<-c.sessions
		})
		return nil, fmt.Errorf("sftp to %s: %w", c.name, ctx.Err())
	}
	if r.err != nil {
		<-c.sessions
		return nil, fmt.Errorf("sftp to %s: %w", c.name, r.err)
	}
	p.sessions.Add(1)
	p.sftps.Add(1)
	done := make(chan struct{})
	c.sftp, c.sftpDone = r.sc, done
	p.goTracked(func() {
		// Ends when the client is closed or the connection dies.
		r.sc.Wait()
		r.s.Close()
		close(done)
		<-c.sessions
	})
	return r.sc, nil
}

// sftpSession is an sftp client on a session of its own.
type sftpSession struct {
	sc  *SFTP
	s   *ssh.Session
	err error
}

// openSFTP starts an sftp client on a new session of client, counting
// the packets it sends in sent.
func openSFTP(client *ssh.Client, sent *atomic.Int64) sftpSession {
	s, err := client.NewSession()
	if err != nil {
		return sftpSession{err: err}
	}
	w, err1 := s.StdinPipe()
	r, err2 := s.StdoutPipe()
	if err := errors.Join(err1, err2); err != nil {
		s.Close()
		return sftpSession{err: err}
	}
	if err := s.RequestSubsystem("sftp"); err != nil {
		s.Close()
		return sftpSession{err: fmt.Errorf("start sftp subsystem (is it enabled in sshd?): %w", err)}
	}
	sc, err := newSFTP(r, w, sent)
	if err != nil {
		s.Close()
		return sftpSession{err: err}
	}
	return sftpSession{sc: sc, s: s}
}

// NewSFTP is an sftp client that reads the server's answers from r and
// writes its requests to w: a session's sftp subsystem, or (scp's tests)
// an in-memory server.
func NewSFTP(r io.Reader, w io.WriteCloser) (*SFTP, error) { return newSFTP(r, w, nil) }

// newSFTP is NewSFTP counting the packets it writes in sent (nil: none).
func newSFTP(r io.Reader, w io.WriteCloser, sent *atomic.Int64) (*SFTP, error) {
	// Concurrent writes are safe here: uploads (scp's, keys') write through
	// CreatePrivate, to a temporary name that is removed on any error.
	modes := newModeWriter(w)
	modes.sent = sent
	sc, err := sftp.NewClientPipe(r, modes, sftp.UseConcurrentWrites(true))
	if err != nil {
		return nil, err
	}
	return &SFTP{Client: sc, modes: modes}, nil
}

// Close closes every pooled connection and sftp client and waits for the
// pool's goroutines; dials in progress are abandoned. Later calls return
// ErrClosed.
func (p *Pool) Close() error {
	conns, first := p.conns.close()
	if !first {
		return nil
	}
	killed := make(chan struct{})
	go func() { p.kills.Wait(); close(killed) }()
	select {
	case <-killed:
	case <-time.After(p.hosts.cfg.ConnectTimeout):
	}
	p.cancel()
	var errs []error
	for _, c := range conns {
		if err := c.client.Close(); err != nil && !errors.Is(err, net.ErrClosed) && !errors.Is(err, io.EOF) {
			errs = append(errs, fmt.Errorf("close connection to %s: %w", c.name, err))
		}
	}
	p.holder.close() // and none is started after Close
	p.wg.Wait()
	return errors.Join(errs...)
}
