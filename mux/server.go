package mux

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/nix-hive/nix-hive/transport"
)

// Server holds a pool's connections for the commands that connect to
// its socket.
type Server struct {
	pool    *transport.Pool
	socket  string
	idle    time.Duration
	started time.Time
	hostKey ssh.Signer
	log     func(format string, args ...any)
	record  Record
	retired atomic.Bool
	ln      *net.UnixListener

	// relayOnly serves a command's pool (Relay): channels only, no
	// requests that would stop, retire or reset what the command holds.
	relayOnly bool
	aliases   map[string]string // a Relay's instances by transport.Alias

	clients atomic.Int64
	reads   atomic.Int64 // file-read channels opened: hosts a command read
	mu      sync.Mutex
	active  chan struct{} // signalled whenever a client comes or goes
	stop    chan struct{}
	once    sync.Once
}

// holderIdleKeepAlive is how often the holder probes a connection no
// command is using. Probing every --connect-timeout, as a command does,
// cost 230 bytes per host on the uplink each time: 1.4 KB per host per
// minute, 22 KiB per host over a 16-minute deploy of 1,000 hosts, more
// than the deploy's own control traffic. Two minutes stays under the
// idle timeouts of common NATs and load balancers (Azure's 4 minutes,
// AWS NAT gateways' 350 s), which drop a silent connection without a
// word; a dead one a command finds first is redialed (Pool.OpenChannel).
const holderIdleKeepAlive = 2 * time.Minute

// NewServer makes a holder of cfg's connections that ends after idle
// without a client (0: never). log, if not nil, is told about clients
// refused and connections dropped.
func NewServer(cfg transport.Config, idle time.Duration, log func(format string, args ...any)) (*Server, error) {
	cfg.Passphrase = nil // no one to ask: the agent's keys and unencrypted files only
	if cfg.IdleKeepAlive == 0 {
		cfg.IdleKeepAlive = holderIdleKeepAlive
	}
	p, err := transport.NewPool(cfg)
	if err != nil {
		return nil, err
	}
	signer, err := newHostKey()
	if err != nil {
		p.Close()
		return nil, err
	}
	if log == nil {
		log = func(string, ...any) {}
	}
	return &Server{pool: p, idle: idle, started: time.Now(), hostKey: signer, log: log,
		active: make(chan struct{}, 1), stop: make(chan struct{}),
		record: Record{Pid: os.Getpid(), Hive: cfg.Hive, ConfigSum: configOf(cfg).sum(), Started: time.Now()}}, nil
}

// newHostKey is a key of the holder's (or a Relay's) own for this run:
// clients check it against the copy written beside the socket.
func newHostKey() (ssh.Signer, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	return ssh.NewSignerFromKey(priv)
}

// SetLog names the holder's log file in its record, for mux check to
// show and for the holder to remove when it ends.
func (s *Server) SetLog(path string) { s.record.Log = path }

// Pool is the holder's pool.
func (s *Server) Pool() *transport.Pool { return s.pool }

// Listen creates the socket (mode 0600, in a directory only this user can
// enter) and writes the holder's public key beside it, for clients to
// check they reached it. A socket left by a holder that died is replaced;
// one that answers is an error.
func (s *Server) Listen(path string) (*net.UnixListener, error) {
	if Answers(path) {
		return nil, fmt.Errorf("mux %s: another holder already listens there", path)
	}
	_ = os.Remove(path)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("mux: %w", err)
	}
	ln.SetUnlinkOnClose(true)
	s.socket = path
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("mux: %w", err)
	}
	pub := ssh.MarshalAuthorizedKey(s.hostKey.PublicKey())
	if err := os.WriteFile(path+".pub", pub, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("mux: %w", err)
	}
	s.record.Socket, s.record.file = path, recordPath(path, s.record.Pid)
	if err := s.record.write(); err != nil {
		ln.Close()
		return nil, fmt.Errorf("mux: %w", err)
	}
	s.ln = ln
	return ln, nil
}

// retire lets go of the socket (a holder for the hive as it is now takes
// it) and ends the holder once no command uses it.
func (s *Server) retire() {
	if s.retired.Swap(true) {
		return
	}
	s.log("the hive changed: retired, ending once unused")
	s.ln.Close() // unlinks the socket before the retiring command goes on
	os.Remove(s.socket + ".pub")
	s.record.Retired = true
	s.record.write()
	s.touch()
}

// cleanUp removes what the holder keeps beside its socket.
func (s *Server) cleanUp() {
	os.Remove(s.record.file)
	if !s.retired.Load() {
		os.Remove(s.socket + ".pub")
	}
	if s.record.Log != "" {
		os.Remove(s.record.Log)
	}
}

// Serve answers clients on ln until Stop, ctx's end, or idle time without
// a client; it then closes ln and every held connection.
func (s *Server) Serve(ctx context.Context, ln *net.UnixListener) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer s.pool.Close()
	defer s.cleanUp()
	go func() {
		s.waitIdle(ctx)
		// Clients see their connection end only once the hosts' have
		// and the holder's record is gone: mux stop returns when the
		// holder is, and a command that stopped the holder it started
		// leaves nothing behind (TestMuxOnlyWhenConnected found the
		// record still there now and then).
		ln.Close()
		s.pool.Close()
		s.cleanUp()
		cancel()
	}()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := ln.AcceptUnix()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				<-ctx.Done()
				return nil
			}
			// Out of descriptors, say: the held connections are still
			// good, and a client a moment later may get through.
			s.log("accept: %v", err)
			select {
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		if uid, err := peerUID(c); err != nil || uid != os.Getuid() {
			s.log("refused a client of uid %d (%v)", uid, err)
			c.Close()
			continue
		}
		s.clients.Add(1)
		s.touch()
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer s.touch()
			defer s.clients.Add(-1)
			s.serveClient(ctx, c)
		}()
	}
}

// Stop ends Serve.
func (s *Server) Stop() { s.once.Do(func() { close(s.stop) }) }

func (s *Server) touch() {
	select {
	case s.active <- struct{}{}:
	default:
	}
}

// waitIdle returns once the holder is to end: Stop, ctx, or idle time
// with no client connected.
func (s *Server) waitIdle(ctx context.Context) {
	var timer <-chan time.Time
	for {
		if s.retired.Load() && s.clients.Load() == 0 {
			return
		}
		if s.idle > 0 && s.clients.Load() == 0 && timer == nil {
			timer = time.After(s.idle)
		}
		select {
		case <-ctx.Done():
			return
		case <-s.stop:
			return
		case <-timer:
			if s.clients.Load() == 0 {
				s.log("idle for %s: ending", s.idle)
				return
			}
			timer = nil
		case <-s.active:
			timer = nil
		}
	}
}

func (s *Server) serveClient(ctx context.Context, c net.Conn) {
	defer c.Close()
	cfg := &ssh.ServerConfig{NoClientAuth: true}
	cfg.AddHostKey(s.hostKey)
	sc, chans, reqs, err := ssh.NewServerConn(c, cfg)
	if err != nil {
		// A probe (Answers) connects and hangs up: nothing to say.
		if !errors.Is(err, io.EOF) && !errors.Is(err, syscall.ECONNRESET) && !errors.Is(err, syscall.EPIPE) {
			s.log("client handshake: %v", err)
		}
		return
	}
	stop := context.AfterFunc(ctx, func() { sc.Close() })
	defer stop()
	go s.globalRequests(reqs)
	var wg sync.WaitGroup
	defer wg.Wait()
	for nc := range chans {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.channel(ctx, nc)
		}()
	}
}

func (s *Server) globalRequests(reqs <-chan *ssh.Request) {
	for r := range reqs {
		if s.relayOnly && r.Type != "keepalive@openssh.com" {
			r.Reply(false, nil)
			continue
		}
		switch r.Type {
		case muxReset:
			s.pool.Reset(string(r.Payload))
			r.Reply(true, nil)
		case muxInfo:
			b, _ := json.Marshal(s.Info())
			r.Reply(true, b)
		case muxStop:
			r.Reply(true, nil)
			s.Stop()
		case muxRetire:
			s.retire()
			r.Reply(true, nil)
		case "keepalive@openssh.com":
			r.Reply(true, nil)
		default:
			r.Reply(false, nil)
		}
	}
}

// Info describes the holder now.
func (s *Server) Info() Info {
	st := s.pool.Stats()
	idle := "none"
	if s.idle > 0 {
		idle = s.idle.String()
	}
	return Info{Pid: os.Getpid(), Started: s.started, Idle: idle, Connected: st.Connected,
		Handshakes: st.Direct + st.Tunnelled, Sessions: st.Sessions, Reads: int(s.reads.Load()),
		SFTPRequests: st.SFTPRequests, Socket: s.socket}
}

// instance is the instance a client names: a Relay also knows each by
// its alias, the host name the ssh that nix copy runs is given.
func (s *Server) instance(name string) string {
	if n, ok := s.aliases[name]; ok {
		return n
	}
	return name
}

func (s *Server) channel(ctx context.Context, nc ssh.NewChannel) {
	switch nc.ChannelType() {
	case muxConnect:
		name := s.instance(string(nc.ExtraData()))
		cctx, cancel := context.WithTimeout(ctx, s.dialBound(name))
		defer cancel()
		if _, err := s.pool.Client(cctx, name); err != nil {
			nc.Reject(dialRejection(err), err.Error())
			return
		}
		if ch, reqs, err := nc.Accept(); err == nil {
			go ssh.DiscardRequests(reqs)
			// Which of the instance's addresses answered, for status.
			ch.Write([]byte(s.pool.Reached(name)))
			ch.Close()
		}
	case muxFiles:
		ch, reqs, err := nc.Accept()
		if err != nil {
			return
		}
		s.reads.Add(1)
		go ssh.DiscardRequests(reqs)
		s.files(ctx, ch, s.instance(string(nc.ExtraData())))
	case muxOpen:
		var m openMsg
		if err := ssh.Unmarshal(nc.ExtraData(), &m); err != nil {
			nc.Reject(ssh.Prohibited, "malformed "+muxOpen)
			return
		}
		m.Instance = s.instance(m.Instance)
		s.relay(ctx, nc, m)
	default:
		nc.Reject(ssh.UnknownChannelType, nc.ChannelType())
	}
}

// dialRejection is the reason a holder gives for a connection it could
// not make: Prohibited when it could not log in, which tells a client
// that can ask for a passphrase to log in itself.
func dialRejection(err error) ssh.RejectionReason {
	if errors.As(err, new(transport.LoginError)) {
		return ssh.Prohibited
	}
	return ssh.ConnectionFailed
}

// dialBound is how long the holder waits to reach instance: as long as
// its pool dials, ConnectTimeout per hop.
func (s *Server) dialBound(instance string) time.Duration {
	return s.pool.Hosts().DialBound(instance)
}

// relay opens m's channel on the instance's connection and relays it to
// the client's until either side closes it.
func (s *Server) relay(ctx context.Context, nc ssh.NewChannel, m openMsg) {
	octx, cancel := context.WithTimeout(ctx, s.dialBound(m.Instance))
	up, upReqs, release, err := s.pool.OpenChannel(octx, m.Instance, m.Fresh, m.Type, m.Data)
	cancel()
	if err != nil {
		var oce *ssh.OpenChannelError
		if errors.As(err, &oce) {
			nc.Reject(oce.Reason, oce.Message)
		} else {
			nc.Reject(dialRejection(err), err.Error())
		}
		return
	}
	defer release()
	down, downReqs, err := nc.Accept()
	if err != nil {
		up.Close()
		return
	}
	relayChannel(down, downReqs, up, upReqs)
}

// relayChannel copies data, stderr and requests both ways. It returns
// once the host's side has closed (its exit status passed on first) or
// the client's has.
func relayChannel(down ssh.Channel, downReqs <-chan *ssh.Request, up ssh.Channel, upReqs <-chan *ssh.Request) {
	var out sync.WaitGroup
	out.Add(2)
	go func() {
		defer out.Done()
		io.Copy(down, up)
	}()
	go func() {
		defer out.Done()
		io.Copy(down.Stderr(), up.Stderr())
	}()
	go func() {
		io.Copy(up, down)
		up.CloseWrite()
	}()
	go func() {
		for r := range downReqs {
			ok, err := up.SendRequest(r.Type, r.WantReply, r.Payload)
			if r.WantReply {
				r.Reply(ok && err == nil, nil)
			}
		}
		up.Close() // the client closed its side
	}()
	for r := range upReqs {
		ok, err := down.SendRequest(r.Type, r.WantReply, r.Payload)
		if r.WantReply {
			r.Reply(ok && err == nil, nil)
		}
	}
	out.Wait()
	down.CloseWrite()
	down.Close()
	up.Close()
}

// filesRequest and filesReply are the files channel's messages, one
// JSON object per line each way: a batch of reads and their answers, or
// why the session failed.
type filesRequest struct {
	Batch []transport.FileQuery `json:"batch"`
}

type filesReply struct {
	Answers []transport.FileAnswer `json:"answers,omitempty"`
	Err     string                 `json:"err,omitempty"`
}

// files answers a client's batches of reads of instance's files over the
// held sftp session, opening it on first use and again after it failed.
func (s *Server) files(ctx context.Context, ch ssh.Channel, instance string) {
	defer ch.Close()
	dec, enc := json.NewDecoder(ch), json.NewEncoder(ch)
	for {
		var q filesRequest
		if err := dec.Decode(&q); err != nil {
			return
		}
		var a filesReply
		sctx, cancel := context.WithTimeout(ctx, s.dialBound(instance))
		sc, err := s.pool.SFTP(sctx, instance)
		cancel()
		if err == nil {
			if a.Answers, err = sc.Reader().Batch(q.Batch); err != nil {
				sc.Close() // the next request opens a new session
			}
		}
		if err != nil {
			a = filesReply{Err: err.Error()}
		}
		if enc.Encode(a) != nil {
			return
		}
	}
}
