package transport

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"
)

// A connection holder ("nix-hive mux", like OpenSSH's ControlPersist)
// keeps a Pool's connections, and each host's sftp session, open between
// commands. Commands reach it over a Unix socket that only its user can
// reach, speaking SSH there too: each channel a command opens names the
// instance it is for, and the holder opens the same channel on its
// connection to that instance and relays it. A command through the holder
// thus costs each host a session but no new connection (a key exchange,
// a login, sshd's privilege separation), and reads a host's state files
// over the held sftp session without starting any process there.
//
// A holder belongs to a hive (Config.Hive, its directory): the socket's
// name is a hash of it, and a record beside the socket (muxholders.go)
// says which version of the hive's endpoints and client policy the
// holder serves. A command that finds the hive changed retires the
// holder (it lets go of the socket and ends when the commands using it
// do) and goes on without it, or with a new one.

// The holder's channel types and global requests.
const (
	muxOpen    = "open@nix-hive"    // relay a channel: muxOpenMsg
	muxConnect = "connect@nix-hive" // dial an instance (if not yet), then close
	muxFiles   = "files@nix-hive"   // FileReader requests: JSON lines
	muxReset   = "reset@nix-hive"   // drop an instance's connection
	muxInfo    = "info@nix-hive"    // MuxInfo as JSON
	muxStop    = "stop@nix-hive"    // end the holder
	muxRetire  = "retire@nix-hive"  // let go of the socket; end when unused
)

// muxProtocol changes whenever the protocol does: it is part of the
// socket's name, so a newer nix-hive never talks to an older holder.
const muxProtocol = "nix-hive-mux-2"

type muxOpenMsg struct {
	Instance string
	// Fresh asks for a connection made for this channel alone and closed
	// with it (RunFresh), not the held one.
	Fresh bool
	Type  string
	Data  []byte
}

// MuxInfo is what a holder reports about itself.
type MuxInfo struct {
	Pid     int       `json:"pid"`
	Started time.Time `json:"started"`
	Idle    string    `json:"idle_timeout"`
	// Connected is how many instances it holds a connection to now.
	Connected int `json:"connected"`
	// Handshakes is how many SSH connections it has made since it
	// started: a command that found every host connected adds none.
	Handshakes int `json:"handshakes"`
	Sessions   int `json:"sessions"`
	// Reads is how many times a command began reading a host's files
	// (its state, for status or a deploy): a command counts each host
	// once.
	Reads int `json:"reads"`
	// Socket is where it listens; its log is beside it (.log).
	Socket string `json:"socket"`
}

// muxConfig is what a holder is made of, and what names its socket: a
// Config's persisted fields (those not tagged json:"-": the endpoints and
// the client policy, not what is each command's own), with the protocol
// and the content of the user's ssh config.
type muxConfig struct {
	Protocol string
	Config
	// UserConfigSum is the user's ssh config's content hash: a changed
	// IdentityFile or HostName there changes the holder too.
	UserConfigSum string
	// Hive is Config.Hive, which it hides: encoded after UserConfigSum,
	// where the sums in running holders' records have it.
	Hive string
}

func toMuxConfig(cfg Config) muxConfig {
	cfg = WithDefaults(cfg)
	var sum string
	if b, err := os.ReadFile(UserConfigFile(cfg)); err == nil {
		s := sha256.Sum256(b)
		sum = hex.EncodeToString(s[:])
	}
	return muxConfig{Protocol: muxProtocol, Config: cfg, UserConfigSum: sum, Hive: cfg.Hive}
}

// sum names the version of the hive m serves: everything but the
// timeouts, which are each command's own.
func (m muxConfig) sum() string {
	m.ConnectTimeout, m.KeepAlive, m.KeepAliveTimeout = 0, 0, 0
	b, _ := json.Marshal(m)
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:12])
}

// config is the Config a holder serves: m's, in batch mode (a holder
// has no one to ask for a password).
func (m muxConfig) config() Config {
	cfg := m.Config
	cfg.Hive, cfg.BatchMode = m.Hive, true
	return cfg
}

// MuxDir is the directory of this user's holder sockets:
// $XDG_RUNTIME_DIR/nix-hive, else nix-hive-UID in the temporary directory.
// With create it is made (mode 0700) if missing. One that exists must be
// a directory of this user's that no one else can enter, or it is
// refused: whoever could write there could pose as the holder.
func MuxDir(create bool) (string, error) {
	dir := filepath.Join(os.TempDir(), "nix-hive-"+strconv.Itoa(os.Getuid()))
	if rt := os.Getenv("XDG_RUNTIME_DIR"); rt != "" {
		dir = filepath.Join(rt, "nix-hive")
	}
	if create {
		if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
			return "", fmt.Errorf("mux socket directory: %w", err)
		}
	}
	fi, err := os.Lstat(dir)
	if errors.Is(err, os.ErrNotExist) && !create {
		return dir, nil
	}
	if err != nil {
		return "", fmt.Errorf("mux socket directory: %w", err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	switch {
	case !fi.IsDir():
		return "", fmt.Errorf("mux socket directory %s: not a directory; remove it", dir)
	case !ok || int(st.Uid) != os.Getuid():
		return "", fmt.Errorf("mux socket directory %s: owned by another user; remove it", dir)
	case fi.Mode().Perm()&0o077 != 0:
		return "", fmt.Errorf("mux socket directory %s: mode %s lets others in; chmod 700 it", dir, fi.Mode().Perm())
	}
	return dir, nil
}

// MuxSocket is the socket of cfg's hive's holder, in MuxDir (which it
// does not create): a hash of Config.Hive, or, for a Config that names
// no hive, of its endpoints and policy.
func MuxSocket(cfg Config) (string, error) {
	dir, err := MuxDir(false)
	if err != nil {
		return "", err
	}
	name := toMuxConfig(cfg).sum()
	if cfg.Hive != "" {
		s := sha256.Sum256([]byte("hive " + cfg.Hive))
		name = hex.EncodeToString(s[:12])
	}
	return filepath.Join(dir, name+".sock"), nil
}

// RunningMux is the socket of cfg's holder if one answers there and
// serves the hive as cfg has it, else "": what a command goes through
// unless told not to. A holder of an earlier version of the hive is
// retired on the way (it ends when the commands using it do), so that
// the next holder takes its socket. A socket directory others could use
// is an error.
func RunningMux(cfg Config) (string, error) {
	sock, err := MuxSocket(cfg)
	if err != nil || !MuxAnswers(sock) {
		return "", err
	}
	cur, ok := currentHolder(sock)
	if ok && cur.ConfigSum == toMuxConfig(cfg).sum() {
		return sock, nil
	}
	retireMux(sock)
	return "", nil
}

// MuxAnswers says whether a process listens at the socket path: a socket
// whose holder died (killed, or its machine's /tmp kept) does not.
func MuxAnswers(path string) bool {
	c, err := net.Dial("unix", path)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// EncodeMuxConfig is cfg as a holder started in another process reads it
// (DecodeMuxConfig); it holds no secret, only endpoints and policy.
func EncodeMuxConfig(cfg Config) ([]byte, error) { return json.Marshal(toMuxConfig(cfg)) }

// DecodeMuxConfig reads EncodeMuxConfig's output.
func DecodeMuxConfig(b []byte) (Config, error) {
	var m muxConfig
	if err := json.Unmarshal(b, &m); err != nil {
		return Config{}, fmt.Errorf("mux config: %w", err)
	}
	if m.Protocol != muxProtocol {
		return Config{}, fmt.Errorf("mux config: protocol %q, want %q", m.Protocol, muxProtocol)
	}
	return m.config(), nil
}

// peerUID is the user id of the process at the other end of a Unix
// socket connection.
func peerUID(c net.Conn) (int, error) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return -1, errors.New("not a Unix socket")
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return -1, err
	}
	var cred *syscall.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	}); err != nil {
		return -1, err
	}
	if cerr != nil {
		return -1, cerr
	}
	return int(cred.Uid), nil
}

// MuxServer holds a pool's connections for the commands that connect to
// its socket.
type MuxServer struct {
	pool    *Pool
	socket  string
	idle    time.Duration
	started time.Time
	hostKey ssh.Signer
	log     func(format string, args ...any)
	record  MuxHolder
	retired atomic.Bool
	ln      *net.UnixListener

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
// word; a dead one a command finds first is redialed (openChannel).
const holderIdleKeepAlive = 2 * time.Minute

// NewMuxServer makes a holder of cfg's connections that ends after idle
// without a client (0: never). log, if not nil, is told about clients
// refused and connections dropped.
func NewMuxServer(cfg Config, idle time.Duration, log func(format string, args ...any)) (*MuxServer, error) {
	cfg.Passphrase = nil // no one to ask: the agent's keys and unencrypted files only
	if cfg.IdleKeepAlive == 0 {
		cfg.IdleKeepAlive = holderIdleKeepAlive
	}
	p, err := NewPool(cfg)
	if err != nil {
		return nil, err
	}
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		p.Close()
		return nil, err
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		p.Close()
		return nil, err
	}
	if log == nil {
		log = func(string, ...any) {}
	}
	return &MuxServer{pool: p, idle: idle, started: time.Now(), hostKey: signer, log: log,
		active: make(chan struct{}, 1), stop: make(chan struct{}),
		record: MuxHolder{Pid: os.Getpid(), Hive: cfg.Hive, ConfigSum: toMuxConfig(cfg).sum(), Started: time.Now()}}, nil
}

// SetLog names the holder's log file in its record, for mux check to
// show and for the holder to remove when it ends.
func (s *MuxServer) SetLog(path string) { s.record.Log = path }

// Pool is the holder's pool.
func (s *MuxServer) Pool() *Pool { return s.pool }

// Listen creates the socket (mode 0600, in a directory only this user can
// enter) and writes the holder's public key beside it, for clients to
// check they reached it. A socket left by a holder that died is replaced;
// one that answers is an error.
func (s *MuxServer) Listen(path string) (*net.UnixListener, error) {
	if MuxAnswers(path) {
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
func (s *MuxServer) retire() {
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
func (s *MuxServer) cleanUp() {
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
func (s *MuxServer) Serve(ctx context.Context, ln *net.UnixListener) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer s.pool.Close()
	defer s.cleanUp()
	go func() {
		s.waitIdle(ctx)
		// Clients see their connection end only once the hosts' have:
		// mux stop returns when the holder is gone.
		ln.Close()
		s.pool.Close()
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
func (s *MuxServer) Stop() { s.once.Do(func() { close(s.stop) }) }

func (s *MuxServer) touch() {
	select {
	case s.active <- struct{}{}:
	default:
	}
}

// waitIdle returns once the holder is to end: Stop, ctx, or idle time
// with no client connected.
func (s *MuxServer) waitIdle(ctx context.Context) {
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

func (s *MuxServer) serveClient(ctx context.Context, c net.Conn) {
	defer c.Close()
	cfg := &ssh.ServerConfig{NoClientAuth: true}
	cfg.AddHostKey(s.hostKey)
	sc, chans, reqs, err := ssh.NewServerConn(c, cfg)
	if err != nil {
		// A probe (MuxAnswers) connects and hangs up: nothing to say.
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

func (s *MuxServer) globalRequests(reqs <-chan *ssh.Request) {
	for r := range reqs {
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
func (s *MuxServer) Info() MuxInfo {
	d, t := s.pool.Handshakes()
	idle := "none"
	if s.idle > 0 {
		idle = s.idle.String()
	}
	return MuxInfo{Pid: os.Getpid(), Started: s.started, Idle: idle, Connected: s.pool.Connected(),
		Handshakes: d + t, Sessions: s.pool.Sessions(), Reads: int(s.reads.Load()), Socket: s.socket}
}

func (s *MuxServer) channel(ctx context.Context, nc ssh.NewChannel) {
	switch nc.ChannelType() {
	case muxConnect:
		name := string(nc.ExtraData())
		cctx, cancel := context.WithTimeout(ctx, s.dialBound(name))
		defer cancel()
		if _, err := s.pool.conn(cctx, name); err != nil {
			nc.Reject(dialRejection(err), err.Error())
			return
		}
		if ch, reqs, err := nc.Accept(); err == nil {
			go ssh.DiscardRequests(reqs)
			ch.Close()
		}
	case muxFiles:
		ch, reqs, err := nc.Accept()
		if err != nil {
			return
		}
		s.reads.Add(1)
		go ssh.DiscardRequests(reqs)
		s.files(ctx, ch, string(nc.ExtraData()))
	case muxOpen:
		var m muxOpenMsg
		if err := ssh.Unmarshal(nc.ExtraData(), &m); err != nil {
			nc.Reject(ssh.Prohibited, "malformed "+muxOpen)
			return
		}
		s.relay(ctx, nc, m)
	default:
		nc.Reject(ssh.UnknownChannelType, nc.ChannelType())
	}
}

// dialRejection is the reason a holder gives for a connection it could
// not make: Prohibited when it could not log in, which tells a client
// that can ask for a passphrase to log in itself.
func dialRejection(err error) ssh.RejectionReason {
	if errors.As(err, new(loginError)) {
		return ssh.Prohibited
	}
	return ssh.ConnectionFailed
}

// dialBound is how long the holder waits to reach instance: as long as
// its pool dials, ConnectTimeout per hop.
func (s *MuxServer) dialBound(instance string) time.Duration {
	return s.pool.Hosts().DialBound(instance)
}

// relay opens m's channel on the instance's connection and relays it to
// the client's until either side closes it.
func (s *MuxServer) relay(ctx context.Context, nc ssh.NewChannel, m muxOpenMsg) {
	octx, cancel := context.WithTimeout(ctx, s.dialBound(m.Instance))
	up, upReqs, release, err := s.pool.openChannel(octx, m.Instance, m.Fresh, m.Type, m.Data)
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
	Batch []FileQuery `json:"batch"`
}

type filesReply struct {
	Answers []FileAnswer `json:"answers,omitempty"`
	Err     string       `json:"err,omitempty"`
}

// files answers a client's batches of reads of instance's files over the
// held sftp session, opening it on first use and again after it failed.
func (s *MuxServer) files(ctx context.Context, ch ssh.Channel, instance string) {
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
