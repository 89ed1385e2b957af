package transport

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/nix-hive/nix-hive/hostkey"
)

// connections holds a pool's SSH connections, at most one per endpoint.
// It owns making them (directly, through a jump host's connection or a
// ProxyCommand, or through the holder; the handshake and what a failed
// one means), sharing one dial between the callers that ask at once,
// probing them with keepalives, and forgetting a dead one so that the
// next caller redials. The sessions on them are the Pool's.
type connections struct {
	hosts  *Hosts
	holder *holderLink
	ctx    context.Context // the pool's, cancelled by Close; parent of every dial
	track  func(fn func()) // the pool's goTracked, so Close waits for dials and keepalives

	mu      sync.Mutex
	closed  bool
	live    map[string]*conn
	dialing map[string]*dialCall
	dials   map[string]int

	keepaliveTick func(probed bool) // tests: told at each keepalive tick whether it probed

	// handshakes counts SSH connections established, direct and
	// tunnelled: what a fleet-wide command costs the hosts' sshd.
	handshakes [2]atomic.Int64
	keepalives atomic.Int64

	// agreed is what the last handshake with each address agreed on,
	// and last what the last handshake with any agreed on while every
	// narrowed one was taken (see narrow).
	agreedMu sync.Mutex
	agreed   map[string]ssh.NegotiatedAlgorithms
	last     *ssh.NegotiatedAlgorithms
	mixed    bool // a host refused what another agreed to
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

// get returns the pooled connection to name, dialing it (and its jump
// hosts) on first use; see Pool.Client.
func (cs *connections) get(ctx context.Context, name string) (*conn, error) {
	if _, ok := cs.hosts.endpoints[name]; !ok {
		return nil, fmt.Errorf("%w %q", ErrUnknownInstance, name)
	}
	cs.mu.Lock()
	if cs.closed {
		cs.mu.Unlock()
		return nil, ErrClosed
	}
	if c := cs.live[name]; c != nil {
		select {
		case <-c.done:
			delete(cs.live, name)
		default:
			cs.mu.Unlock()
			return c, nil
		}
	}
	call := cs.dialing[name]
	if call == nil {
		call = &dialCall{done: make(chan struct{})}
		cs.dialing[name] = call
		cs.dials[name]++
		cs.track(func() {
			c, err := cs.dial(name, false)
			cs.finish(name, call, c, err)
		})
	}
	cs.mu.Unlock()
	select {
	case <-call.done:
		return call.c, call.err
	case <-ctx.Done():
		return nil, fmt.Errorf("connect %s: %w", name, ctx.Err())
	}
}

// finish records a dial's outcome for its callers and, if it connected,
// pools the connection and watches it.
func (cs *connections) finish(name string, call *dialCall, client *ssh.Client, err error) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	delete(cs.dialing, name)
	if err == nil && cs.closed {
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
	cs.live[name] = c
	call.c = c
	close(call.done)
	cs.track(func() {
		client.Wait()
		close(c.done)
		cs.evict(c)
	})
	if cs.hosts.cfg.KeepAlive > 0 && !cs.holder.carries(name) {
		cs.track(func() { cs.keepalive(c) })
	}
}

// evict forgets a connection (if it is still the pooled one) so the next
// caller redials.
func (cs *connections) evict(c *conn) {
	cs.mu.Lock()
	if cs.live[c.name] == c {
		delete(cs.live, c.name)
	}
	cs.mu.Unlock()
}

// keepalive probes the connection at a tick when the host said nothing
// since the last one, as OpenSSH's ServerAliveInterval does: anything
// read proves the connection as a reply would, and a probe costs the
// uplink a packet each way (and an acknowledgement) on every layer of
// tunnelling, which for hosts streaming heartbeats while their jobs run
// was most of what a longer deploy added per host (docs/scale.md). A
// probe that fails or stays unanswered for KeepAliveTimeout closes the
// connection, which evicts it from the pool.
func (cs *connections) keepalive(c *conn) {
	t := time.NewTicker(cs.hosts.cfg.KeepAlive)
	defer t.Stop()
	probed := time.Now()
	last := probed // the end of the last tick: what was read before it is no news
	for {
		select {
		case <-c.done:
			return
		case <-t.C:
		}
		heard := lastHeard(c.client).After(last)
		if heard {
			probed = time.Now()
		}
		idle := c.inUse.Load() == 0 && time.Since(probed) < cs.hosts.cfg.IdleKeepAlive
		probe := !heard && !idle
		if probe {
			if !cs.probe(c) {
				return
			}
			probed = time.Now()
		}
		last = time.Now()
		if cs.keepaliveTick != nil {
			cs.keepaliveTick(probe)
		}
	}
}

// probe sends one keepalive and waits for its reply; without one it
// closes the connection and returns false.
func (cs *connections) probe(c *conn) bool {
	cs.keepalives.Add(1)
	replied := make(chan error, 1)
	cs.track(func() {
		_, _, err := c.client.SendRequest("keepalive@openssh.com", true, nil)
		replied <- err
	})
	timer := time.NewTimer(cs.hosts.cfg.KeepAliveTimeout)
	defer timer.Stop()
	select {
	case err := <-replied:
		if err != nil {
			c.client.Close()
			return false
		}
		return true
	case <-timer.C:
		c.client.Close()
		return false
	case <-c.done:
		return false
	}
}

// dial connects to one endpoint, through its jump host's pooled connection
// when it has one, or through the holder. A fresh connection is one the
// holder makes for the channel opened on it alone (see RunFresh).
func (cs *connections) dial(name string, fresh bool) (*ssh.Client, error) {
	s := cs.hosts.endpoints[name]
	addr := s.Addr()
	if cs.holder.through(name) {
		ctx, cancel := context.WithTimeout(cs.ctx, cs.hosts.DialBound(name))
		defer cancel()
		c, reached, err := cs.holder.loaded().Dial(ctx, name, fresh)
		if err != nil && ctx.Err() != nil {
			return nil, fmt.Errorf("connect %s (%s) through mux: %w", name, addr, cs.ctxErr(ctx, err))
		}
		if err == nil {
			cs.setReached(name, reached)
		}
		if !errors.As(err, new(LoginError)) || cs.hosts.cfg.Passphrase == nil {
			return c, err
		}
		// The holder has no one to ask for a key's passphrase; this
		// command has, so it logs in itself (through the holder's
		// connections to the jump hosts, if it has those).
		cs.holder.goDirect(name)
	}
	// Each address in turn; the first that answers wins. One that does
	// not (or presents another key) is said, with the others', if none
	// does.
	var errs []error
	addrs := s.addresses()
	if r := cs.hosts.reachedAddr(name); r != "" {
		// The address that answered last goes first: a fresh connection
		// (a confirmation) does not wait for dead ones again.
		slices.SortStableFunc(addrs, func(a, b *settings) int {
			switch {
			case a.HostName == r && b.HostName != r:
				return -1
			case b.HostName == r && a.HostName != r:
				return 1
			}
			return 0
		})
	}
	for _, t := range addrs {
		c, err := cs.dialAddress(name, t)
		if err == nil {
			cs.setReached(name, t.HostName)
			return c, nil
		}
		errs = append(errs, err)
		if cs.ctx.Err() != nil {
			break
		}
	}
	if len(errs) == 1 {
		return nil, errs[0]
	}
	return nil, fmt.Errorf("none of the %d addresses of %s answered: %w", len(errs), name, errors.Join(errs...))
}

// setReached records the address a connection to name reached.
func (cs *connections) setReached(name, addr string) {
	if addr != "" {
		cs.hosts.setReached(name, addr)
	}
}

// errNarrowed is a handshake that offered only what the address agreed
// to before (narrow), and that it no longer accepts.
var errNarrowed = errors.New("the host no longer takes the algorithms it agreed to before")

// narrow has cc offer only the algorithms the last handshake with s's
// address agreed on, if there was one in this run, else those the last
// handshake with another host did: a fleet's hosts run one sshd
// configuration, so a host's first connection, and a deploy's second
// (the confirmation's), then send a key exchange init of a few names
// rather than every one nix-hive supports, about a third of a kilobyte
// less on each host's uplink. It reports whether it did. A host whose
// sshd differs, or changed since (its new system configures it), refuses
// them: that handshake fails with errNarrowed, the record goes, and the
// dial is made again with every name; from then on only a host's own
// record narrows, so a mixed fleet pays that retry once.
func (cs *connections) narrow(s *settings, cc *ssh.ClientConfig) bool {
	cs.agreedMu.Lock()
	a, ok := cs.agreed[s.Name+" "+s.Addr()]
	if !ok && cs.last != nil && !cs.mixed {
		a, ok = *cs.last, true
	}
	cs.agreedMu.Unlock()
	// Never what s's own lists leave out: another host's agreement may
	// be outside what this one's options allow.
	macOK := func(m string) bool { return m == "" || slices.Contains(cc.MACs, m) }
	if !ok || a.KeyExchange == "" || a.Write.Cipher == "" || a.HostKey == "" ||
		!slices.Contains(cc.HostKeyAlgorithms, a.HostKey) || !slices.Contains(cc.KeyExchanges, a.KeyExchange) ||
		!slices.Contains(cc.Ciphers, a.Write.Cipher) || !slices.Contains(cc.Ciphers, a.Read.Cipher) ||
		!macOK(a.Write.MAC) || !macOK(a.Read.MAC) {
		return false
	}
	only := func(name string) []string { return []string{name} }
	cc.KeyExchanges, cc.HostKeyAlgorithms = only(a.KeyExchange), only(a.HostKey)
	cc.Ciphers = slices.Compact([]string{a.Write.Cipher, a.Read.Cipher})
	// AEAD ciphers agree on no MAC; the list must still name one.
	cc.MACs = slices.Compact(slices.DeleteFunc([]string{a.Write.MAC, a.Read.MAC}, func(m string) bool { return m == "" }))
	if len(cc.MACs) == 0 {
		cc.MACs = macAlgorithms[:1]
	}
	return true
}

// agree records what a handshake with s's address agreed on; nil
// forgets it, and marks the fleet mixed.
func (cs *connections) agree(s *settings, c ssh.Conn) {
	cs.agreedMu.Lock()
	defer cs.agreedMu.Unlock()
	key := s.Name + " " + s.Addr()
	m, ok := c.(ssh.AlgorithmsConnMetadata)
	if !ok {
		delete(cs.agreed, key)
		cs.mixed = true
		return
	}
	if cs.agreed == nil {
		cs.agreed = map[string]ssh.NegotiatedAlgorithms{}
	}
	a := m.Algorithms()
	cs.agreed[key], cs.last = a, &a
}

// dialAddress connects to instance name at s's HostName, directly or
// through its jump host: again with every algorithm if a narrowed
// handshake was refused.
func (cs *connections) dialAddress(name string, s *settings) (*ssh.Client, error) {
	c, err := cs.dialAddressOnce(name, s)
	if errors.Is(err, errNarrowed) {
		c, err = cs.dialAddressOnce(name, s)
	}
	return c, err
}

func (cs *connections) dialAddressOnce(name string, s *settings) (*ssh.Client, error) {
	addr := s.Addr()
	if len(s.JumpChain) == 0 {
		ctx, cancel := context.WithTimeout(cs.ctx, cs.hosts.cfg.ConnectTimeout)
		defer cancel()
		raw, via, err := dialDirect(ctx, s)
		if err != nil {
			return nil, fmt.Errorf("dial %s (%s): %w", name, addr, cs.ctxErr(ctx, err))
		}
		return cs.handshake(ctx, s, raw, via)
	}
	jump := s.JumpChain[len(s.JumpChain)-1]
	// The jump's own dial is bounded by its own timeout; ours starts once
	// the jump is up, so ConnectTimeout is per hop.
	for attempt := 0; ; attempt++ {
		jc, err := cs.get(cs.ctx, jump)
		if err != nil {
			return nil, fmt.Errorf("dial %s (%s) via %s: %w", name, addr, jump, err)
		}
		ctx, cancel := context.WithTimeout(cs.ctx, cs.hosts.cfg.ConnectTimeout)
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
			return nil, fmt.Errorf("dial %s (%s) via %s: %w", name, addr, jump, cs.ctxErr(ctx, err))
		}
		client, err := cs.handshake(ctx, s, raw, jump)
		cancel()
		return client, err
	}
}

// ctxErr prefers the context's reason over the symptom it caused.
func (cs *connections) ctxErr(ctx context.Context, err error) error {
	if cs.ctx.Err() != nil {
		return ErrClosed
	}
	if ctx.Err() != nil || errors.Is(err, os.ErrDeadlineExceeded) {
		return fmt.Errorf("no answer within %s: %w", cs.hosts.cfg.ConnectTimeout, context.DeadlineExceeded)
	}
	return err
}

// handshake runs the SSH handshake on raw, bounded by ctx: a deadline on
// the raw conn (cleared afterwards) and, for tunneled conns that have no
// deadlines, closing the conn when ctx ends.
func (cs *connections) handshake(ctx context.Context, s *settings, raw net.Conn, via string) (*ssh.Client, error) {
	addr := s.Addr()
	where := fmt.Sprintf("%s (%s)", s.Name, addr)
	if via != "" {
		where += " via " + via
	}
	cc, closeAgent, err := cs.hosts.clientConfig(s)
	if err != nil {
		raw.Close()
		return nil, err
	}
	defer closeAgent()
	narrowed := cs.narrow(s, cc)
	bc := newBatchConn(raw)
	raw = bc
	if dl, ok := ctx.Deadline(); ok {
		_ = raw.SetDeadline(dl) // unsupported on tunneled conns; AfterFunc covers them
	}
	stop := context.AfterFunc(ctx, func() { raw.Close() })
	sc, chans, reqs, err := ssh.NewClientConn(raw, addr, cc)
	if !stop() {
		if err == nil {
			sc.Close()
		}
		return nil, fmt.Errorf("connect %s: %w", where, cs.ctxErr(ctx, err))
	}
	if err != nil {
		raw.Close()
		// The host may also just close the connection on algorithms it
		// refuses, before this side notices: any failure but the host's
		// key counts.
		if hk := new(hostkey.Error); narrowed && !errors.As(err, &hk) && ctx.Err() == nil {
			cs.agree(s, nil)
			return nil, fmt.Errorf("connect %s: %w: %w", where, errNarrowed, err)
		}
		return nil, cs.handshakeError(ctx, s, where, err)
	}
	cs.agree(s, sc)
	_ = raw.SetDeadline(time.Time{})
	if via == "" {
		cs.handshakes[0].Add(1)
	} else {
		cs.handshakes[1].Add(1)
	}
	return ssh.NewClient(heardConn{Conn: sc, raw: bc}, chans, reqs), nil
}

// handshakeError says why a handshake with s failed: a host key error as
// it is, a refused login with the keys that were tried.
func (cs *connections) handshakeError(ctx context.Context, s *settings, where string, err error) error {
	var hkErr *hostkey.Error
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
	return fmt.Errorf("connect %s: %w", where, cs.ctxErr(ctx, err))
}

// fresh dials a connection outside the pool, bounded by ctx as well as
// the pool's own limits.
func (cs *connections) fresh(ctx context.Context, name string) (*ssh.Client, error) {
	cs.mu.Lock()
	if cs.closed {
		cs.mu.Unlock()
		return nil, ErrClosed
	}
	cs.dials[name]++
	cs.mu.Unlock()
	type result struct {
		c   *ssh.Client
		err error
	}
	ch := make(chan result, 1)
	cs.track(func() {
		c, err := cs.dial(name, true)
		ch <- result{c, err}
	})
	select {
	case r := <-ch:
		return r.c, r.err
	case <-ctx.Done():
		cs.track(func() {
			if r := <-ch; r.c != nil {
				r.c.Close()
			}
		})
		return nil, fmt.Errorf("connect %s: %w", name, ctx.Err())
	}
}

// stats is the pool's Stats but for Sessions, which the Pool counts.
func (cs *connections) stats() Stats {
	cs.mu.Lock()
	st := Stats{Dials: maps.Clone(cs.dials), Connected: len(cs.live)}
	cs.mu.Unlock()
	st.Direct, st.Tunnelled = int(cs.handshakes[0].Load()), int(cs.handshakes[1].Load())
	st.KeepAlives = int(cs.keepalives.Load())
	return st
}

// forget takes the pooled connection to name, if there is one, out of the
// pool and returns it.
func (cs *connections) forget(name string) *conn {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	c := cs.live[name]
	delete(cs.live, name)
	return c
}

// unlessClosed runs fn unless Close has begun, holding the lock, so that
// what fn starts is counted before Close looks.
func (cs *connections) unlessClosed(fn func()) bool {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if cs.closed {
		return false
	}
	fn()
	return true
}

// close refuses connections from now on and returns those pooled; first
// is false when it had been called before.
func (cs *connections) close() (live []*conn, first bool) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if cs.closed {
		return nil, false
	}
	cs.closed = true
	live = make([]*conn, 0, len(cs.live))
	for _, c := range cs.live {
		live = append(live, c)
	}
	return live, true
}
