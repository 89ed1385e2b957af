package transport

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"strings"
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

	holder *holderLink // the holder every connection goes through, if any

	mu      sync.Mutex
	closed  bool
	conns   map[string]*conn
	dialing map[string]*dialCall
	dials   map[string]int

	keepaliveTick func(probed bool) // tests: told at each keepalive tick whether it probed

	// handshakes counts SSH connections established, direct and
	// tunnelled: what a fleet-wide command costs the hosts' sshd.
	handshakes [2]atomic.Int64
	sessions   atomic.Int64 // sessions opened: commands, shells, sftp
}

// conn is one pooled connection.
type conn struct {
	name     string
	client   *ssh.Client
	done     chan struct{} // closed once the connection is gone
	sessions chan struct{} // one token per open session (maxSessions)

	inUse    atomic.Int32  // channels open through OpenChannel (IdleKeepAlive)
	sftpMu   chan struct{} // 1-slot lock that a waiting caller can abandon
	sftp     *SFTP
	sftpDone chan struct{}
}

type dialCall struct {
	done chan struct{}
	c    *conn
	err  error
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
	p := &Pool{
		hosts:   hosts,
		holder:  newHolderLink(cfg),
		conns:   map[string]*conn{},
		dialing: map[string]*dialCall{},
		dials:   map[string]int{},
	}
	p.ctx, p.cancel = context.WithCancel(context.Background())
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
	// Sessions counts the SSH sessions opened: commands, shells, sftp.
	Sessions int
}

// Stats reports the pool's counts so far.
func (p *Pool) Stats() Stats {
	p.mu.Lock()
	st := Stats{Dials: maps.Clone(p.dials), Connected: len(p.conns)}
	p.mu.Unlock()
	st.Direct, st.Tunnelled = int(p.handshakes[0].Load()), int(p.handshakes[1].Load())
	st.Sessions = int(p.sessions.Load())
	return st
}

// Client returns the pooled connection to an instance, dialing it (and its
// jump hosts) on first use. Concurrent callers share one dial; each waits
// only as long as its own ctx allows. The client belongs to the pool: do
// not Close it.
func (p *Pool) Client(ctx context.Context, name string) (*ssh.Client, error) {
	c, err := p.conn(ctx, name)
	if err != nil {
		return nil, err
	}
	return c.client, nil
}

func (p *Pool) conn(ctx context.Context, name string) (*conn, error) {
	if _, ok := p.hosts.endpoints[name]; !ok {
		return nil, fmt.Errorf("%w %q", ErrUnknownInstance, name)
	}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, ErrClosed
	}
	if c := p.conns[name]; c != nil {
		select {
		case <-c.done:
			delete(p.conns, name)
		default:
			p.mu.Unlock()
			return c, nil
		}
	}
	call := p.dialing[name]
	if call == nil {
		call = &dialCall{done: make(chan struct{})}
		p.dialing[name] = call
		p.dials[name]++
		p.goTracked(func() {
			c, err := p.dial(name, false)
			p.finishDial(name, call, c, err)
		})
	}
	p.mu.Unlock()
	select {
	case <-call.done:
		return call.c, call.err
	case <-ctx.Done():
		return nil, fmt.Errorf("connect %s: %w", name, ctx.Err())
	}
}

func (p *Pool) finishDial(name string, call *dialCall, client *ssh.Client, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.dialing, name)
	if err == nil && p.closed {
		client.Close()
		err = ErrClosed
	}
	if err != nil {
		call.err = err
		close(call.done)
		return
	}
	c := &conn{
		name:     name,
		client:   client,
		done:     make(chan struct{}),
		sessions: make(chan struct{}, maxSessions),
		sftpMu:   make(chan struct{}, 1),
	}
	p.conns[name] = c
	call.c = c
	close(call.done)
	p.goTracked(func() {
		client.Wait()
		close(c.done)
		p.evict(c)
	})
	if p.hosts.cfg.KeepAlive > 0 && !p.holder.carries(name) {
		p.goTracked(func() { p.keepalive(c) })
	}
}

// evict forgets a connection (if it is still the pooled one) so the next
// caller redials.
func (p *Pool) evict(c *conn) {
	p.mu.Lock()
	if p.conns[c.name] == c {
		delete(p.conns, c.name)
	}
	p.mu.Unlock()
}

// keepalive probes the connection; a probe that fails or stays unanswered
// for KeepAliveTimeout closes it, which evicts it from the pool.
func (p *Pool) keepalive(c *conn) {
	t := time.NewTicker(p.hosts.cfg.KeepAlive)
	defer t.Stop()
	probed := time.Now()
	for {
		select {
		case <-c.done:
			return
		case <-t.C:
		}
		idle := c.inUse.Load() == 0 && time.Since(probed) < p.hosts.cfg.IdleKeepAlive
		if p.keepaliveTick != nil {
			p.keepaliveTick(!idle)
		}
		if idle {
			continue
		}
		probed = time.Now()
		replied := make(chan error, 1)
		p.goTracked(func() {
			_, _, err := c.client.SendRequest("keepalive@openssh.com", true, nil)
			replied <- err
		})
		timer := time.NewTimer(p.hosts.cfg.KeepAliveTimeout)
		select {
		case err := <-replied:
			timer.Stop()
			if err != nil {
				c.client.Close()
				return
			}
		case <-timer.C:
			c.client.Close()
			return
		case <-c.done:
			timer.Stop()
			return
		}
	}
}

// dial connects to one endpoint, through its jump host's pooled connection
// when it has one, or through the holder. A fresh connection is one the
// holder makes for the channel opened on it alone (see RunFresh).
func (p *Pool) dial(name string, fresh bool) (*ssh.Client, error) {
	s := p.hosts.endpoints[name]
	addr := s.Addr()
	if p.holder.through(name) {
		ctx, cancel := context.WithTimeout(p.ctx, p.hosts.DialBound(name))
		defer cancel()
		c, err := p.holder.loaded().Dial(ctx, name, fresh)
		if err != nil && ctx.Err() != nil {
			return nil, fmt.Errorf("connect %s (%s) through mux: %w", name, addr, p.ctxErr(ctx, err))
		}
		if !errors.As(err, new(LoginError)) || p.hosts.cfg.Passphrase == nil {
			return c, err
		}
		// The holder has no one to ask for a key's passphrase; this
		// command has, so it logs in itself (through the holder's
		// connections to the jump hosts, if it has those).
		p.holder.goDirect(name)
	}
	if len(s.JumpChain) == 0 {
		ctx, cancel := context.WithTimeout(p.ctx, p.hosts.cfg.ConnectTimeout)
		defer cancel()
		raw, via, err := dialDirect(ctx, s)
		if err != nil {
			return nil, fmt.Errorf("dial %s (%s): %w", name, addr, p.ctxErr(ctx, err))
		}
		return p.handshake(ctx, s, raw, via)
	}
	jump := s.JumpChain[len(s.JumpChain)-1]
	// The jump's own dial is bounded by its own timeout; ours starts once
	// the jump is up, so ConnectTimeout is per hop.
	for attempt := 0; ; attempt++ {
		jc, err := p.conn(p.ctx, jump)
		if err != nil {
			return nil, fmt.Errorf("dial %s (%s) via %s: %w", name, addr, jump, err)
		}
		ctx, cancel := context.WithTimeout(p.ctx, p.hosts.cfg.ConnectTimeout)
		raw, err := jc.client.DialContext(ctx, "tcp", addr)
		if err != nil {
			cancel()
			select {
			case <-jc.done:
				if attempt == 0 {
					continue // the jump connection died under us: redial it once
				}
			default:
			}
			return nil, fmt.Errorf("dial %s (%s) via %s: %w", name, addr, jump, p.ctxErr(ctx, err))
		}
		client, err := p.handshake(ctx, s, raw, jump)
		cancel()
		return client, err
	}
}

// ctxErr prefers the context's reason over the symptom it caused.
func (p *Pool) ctxErr(ctx context.Context, err error) error {
	if p.ctx.Err() != nil {
		return ErrClosed
	}
	if ctx.Err() != nil || errors.Is(err, os.ErrDeadlineExceeded) {
		return fmt.Errorf("no answer within %s: %w", p.hosts.cfg.ConnectTimeout, context.DeadlineExceeded)
	}
	return err
}

// handshake runs the SSH handshake on raw, bounded by ctx: a deadline on
// the raw conn (cleared afterwards) and, for tunneled conns that have no
// deadlines, closing the conn when ctx ends.
func (p *Pool) handshake(ctx context.Context, s *settings, raw net.Conn, via string) (*ssh.Client, error) {
	addr := s.Addr()
	where := fmt.Sprintf("%s (%s)", s.Name, addr)
	if via != "" {
		where += " via " + via
	}
	cc, closeAgent, err := p.hosts.clientConfig(s)
	if err != nil {
		raw.Close()
		return nil, err
	}
	defer closeAgent()
	if dl, ok := ctx.Deadline(); ok {
		_ = raw.SetDeadline(dl) // unsupported on tunneled conns; AfterFunc covers them
	}
	stop := context.AfterFunc(ctx, func() { raw.Close() })
	sc, chans, reqs, err := ssh.NewClientConn(raw, addr, cc)
	if !stop() {
		if err == nil {
			sc.Close()
		}
		return nil, fmt.Errorf("connect %s: %w", where, p.ctxErr(ctx, err))
	}
	if err != nil {
		raw.Close()
		return nil, p.handshakeError(ctx, s, where, err)
	}
	_ = raw.SetDeadline(time.Time{})
	if via == "" {
		p.handshakes[0].Add(1)
	} else {
		p.handshakes[1].Add(1)
	}
	return ssh.NewClient(sc, chans, reqs), nil
}

// handshakeError says why a handshake with s failed: a host key error as
// it is, a refused login with the keys that were tried.
func (p *Pool) handshakeError(ctx context.Context, s *settings, where string, err error) error {
	var hkErr *HostKeyError
	if errors.As(err, &hkErr) {
		return hkErr
	}
	if strings.Contains(err.Error(), "unable to authenticate") {
		keys := "the ssh agent's keys and ~/.ssh/id_*"
		if len(s.IdentityFiles) > 0 {
			keys = strings.Join(s.IdentityFiles, ", ")
		}
		return LoginError{fmt.Errorf("connect %s: %s was refused with %s; authorize one for that user or set IdentityFile: %w", where, s.User, keys, err)}
	}
	return fmt.Errorf("connect %s: %w", where, p.ctxErr(ctx, err))
}

// session opens a session on the pooled connection, holding one of its
// session slots until release is called. A connection that turns out to
// be dead is evicted and redialed once; nothing has run on it yet, so the
// retry is safe.
func (p *Pool) session(ctx context.Context, name string) (c *conn, s *ssh.Session, release func(), err error) {
	for attempt := 0; ; attempt++ {
		c, err := p.conn(ctx, name)
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
		p.evict(c)
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
		client, err := p.dialFresh(ctx, name)
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
		c, err := p.conn(ctx, name)
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
			p.evict(c)
			c.client.Close()
		}
		if attempt > 0 || ctx.Err() != nil {
			return nil, nil, nil, err
		}
		p.evict(c)
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

// newSession is ssh.Client.NewSession bounded by ctx; a session that
// arrives after ctx ended is closed.
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
		c, err := p.conn(ctx, name)
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
	p.goTracked(func() { ch <- openSFTP(c.client) })
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

func openSFTP(client *ssh.Client) sftpSession {
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
	sc, err := NewSFTP(r, w)
	if err != nil {
		s.Close()
		return sftpSession{err: err}
	}
	return sftpSession{sc: sc, s: s}
}

// NewSFTP is an sftp client that reads the server's answers from r and
// writes its requests to w: a session's sftp subsystem, or (scp's tests)
// an in-memory server.
func NewSFTP(r io.Reader, w io.WriteCloser) (*SFTP, error) {
	// Concurrent writes are safe here: uploads (scp's, keys') write through
	// CreatePrivate, to a temporary name that is removed on any error.
	modes := newModeWriter(w)
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
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	conns := make([]*conn, 0, len(p.conns))
	for _, c := range p.conns {
		conns = append(conns, c)
	}
	p.mu.Unlock()
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
