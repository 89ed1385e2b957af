package mux

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/nix-hive/nix-hive/transport"
)

// Client is a connection to a holder, the transport.Holder a pool goes
// through: every instance's "connection" is then a hostConn over it.
type Client struct {
	path   string
	client *ssh.Client
	done   chan struct{}
	// via names what relays the connections in errors: "mux" (the
	// holder), or "the deploy's connection" (a Relay).
	via string

	mu    sync.Mutex
	files map[string]*fileReader
}

var _ transport.Holder = (*Client)(nil)

// Dial connects to the holder listening at path, checking that it is
// this user's process and the holder whose key lies beside the socket;
// timeout bounds it (0: transport.DefaultConnectTimeout).
func Dial(path string, timeout time.Duration) (*Client, error) {
	if timeout <= 0 {
		timeout = transport.DefaultConnectTimeout
	}
	pubText, err := os.ReadFile(path + ".pub")
	if err != nil {
		return nil, fmt.Errorf("mux %s: %w", path, err)
	}
	pub, _, _, _, err := ssh.ParseAuthorizedKey(pubText)
	if err != nil {
		return nil, fmt.Errorf("mux %s: key: %w", path, err)
	}
	c, err := net.DialTimeout("unix", path, timeout)
	if err != nil {
		return nil, fmt.Errorf("mux %s: %w", path, err)
	}
	if uid, err := peerUID(c); err != nil || uid != os.Getuid() {
		c.Close()
		return nil, fmt.Errorf("mux %s: served by uid %d, not this user (%v)", path, uid, err)
	}
	_ = c.SetDeadline(time.Now().Add(timeout))
	sc, chans, reqs, err := ssh.NewClientConn(c, "mux", &ssh.ClientConfig{User: "nix-hive", HostKeyCallback: ssh.FixedHostKey(pub)})
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("mux %s: %w", path, err)
	}
	_ = c.SetDeadline(time.Time{})
	m := &Client{path: path, client: ssh.NewClient(sc, chans, reqs), done: make(chan struct{}), files: map[string]*fileReader{}, via: "mux"}
	go func() {
		m.client.Wait()
		close(m.done)
	}()
	return m, nil
}

// Socket is where the holder listens.
func (m *Client) Socket() string { return m.path }

// Info asks the holder about itself.
func (m *Client) Info() (Info, error) {
	ok, b, err := m.client.SendRequest(muxInfo, true, nil)
	if err == nil && !ok {
		err = errors.New("refused")
	}
	var info Info
	if err == nil {
		err = json.Unmarshal(b, &info)
	}
	if err != nil {
		return Info{}, fmt.Errorf("mux %s: info: %w", m.path, err)
	}
	return info, nil
}

// Stop ends the holder and returns once it has closed its connections to
// the hosts.
func (m *Client) Stop() error {
	if _, _, err := m.client.SendRequest(muxStop, true, nil); err != nil {
		return fmt.Errorf("mux %s: stop: %w", m.path, err)
	}
	<-m.done
	return nil
}

// Dial is an instance's connection through the holder, and the address
// the holder's connection reached. Unless fresh, the holder connects to
// the instance first (if it has not), so that a connection error comes
// from Dial, as it would without a holder; a fresh one says no address.
func (m *Client) Dial(ctx context.Context, name string, fresh bool) (*ssh.Client, string, error) {
	reached := ""
	if !fresh {
		ch, err := m.open(ctx, muxConnect, name)
		if err != nil {
			if oce := (*ssh.OpenChannelError)(nil); errors.As(err, &oce) {
				err = fmt.Errorf("%s (through %s)", oce.Message, m.via)
				if oce.Reason == ssh.Prohibited { // see dialRejection
					err = transport.LoginError{Err: err}
				}
				return nil, "", err
			}
			return nil, "", fmt.Errorf("connect %s through mux %s: %w", name, m.path, err)
		}
		b, _ := io.ReadAll(io.LimitReader(ch, 300))
		reached = string(b)
		ch.Close()
	}
	h := &hostConn{m: m, name: name, fresh: fresh, closed: make(chan struct{}),
		chans: make(chan ssh.NewChannel), reqs: make(chan *ssh.Request)}
	return ssh.NewClient(h, h.chans, h.reqs), reached, nil
}

// open opens a channel of the holder's own (typ, for instance), bounded
// by ctx; one that arrives after ctx ended is closed.
func (m *Client) open(ctx context.Context, typ, instance string) (ssh.Channel, error) {
	type result struct {
		ch  ssh.Channel
		err error
	}
	res := make(chan result, 1)
	go func() {
		ch, reqs, err := m.client.OpenChannel(typ, []byte(instance))
		if err == nil {
			go ssh.DiscardRequests(reqs)
		}
		res <- result{ch, err}
	}()
	select {
	case r := <-res:
		return r.ch, r.err
	case <-ctx.Done():
		go func() {
			if r := <-res; r.ch != nil {
				r.ch.Close()
			}
		}()
		return nil, ctx.Err()
	}
}

// Reset asks the holder to drop its connection to name.
func (m *Client) Reset(name string) {
	m.mu.Lock()
	delete(m.files, name)
	m.mu.Unlock()
	m.client.SendRequest(muxReset, true, []byte(name))
}

// Close closes the connection to the holder; the holder runs on.
func (m *Client) Close() error { return m.client.Close() }

// hostConn is an instance's connection as the pool sees it: channels
// opened on it are opened by the holder on its own connection.
type hostConn struct {
	m     *Client
	name  string
	fresh bool

	once   sync.Once
	closed chan struct{}
	chans  chan ssh.NewChannel // nothing arrives: the holder relays no channel the host opens
	reqs   chan *ssh.Request
}

func (h *hostConn) OpenChannel(typ string, data []byte) (ssh.Channel, <-chan *ssh.Request, error) {
	select {
	case <-h.closed:
		return nil, nil, net.ErrClosed
	default:
	}
	return h.m.client.OpenChannel(muxOpen, ssh.Marshal(openMsg{Instance: h.name, Fresh: h.fresh, Type: typ, Data: data}))
}

// SendRequest answers the pool's keepalives for the holder, which keeps
// its own connections alive: the holder answering is what matters here.
func (h *hostConn) SendRequest(name string, wantReply bool, payload []byte) (bool, []byte, error) {
	if name == "keepalive@openssh.com" {
		return h.m.client.SendRequest(name, wantReply, payload)
	}
	return false, nil, nil
}

func (h *hostConn) shut() {
	h.once.Do(func() {
		close(h.closed)
		close(h.chans)
		close(h.reqs)
	})
}

func (h *hostConn) Close() error {
	h.shut()
	return nil
}

func (h *hostConn) Wait() error {
	select {
	case <-h.closed:
		return nil
	case <-h.m.done:
		h.shut()
		return fmt.Errorf("mux %s: connection lost", h.m.path)
	}
}

func (h *hostConn) User() string          { return h.m.client.User() }
func (h *hostConn) SessionID() []byte     { return h.m.client.SessionID() }
func (h *hostConn) ClientVersion() []byte { return h.m.client.ClientVersion() }
func (h *hostConn) ServerVersion() []byte { return h.m.client.ServerVersion() }
func (h *hostConn) RemoteAddr() net.Addr  { return h.m.client.RemoteAddr() }
func (h *hostConn) LocalAddr() net.Addr   { return h.m.client.LocalAddr() }

// fileReader is a transport.FileReader whose requests the holder answers
// over its sftp session with the instance: one request at a time per
// instance.
type fileReader struct {
	mu  sync.Mutex
	ch  ssh.Channel
	enc *json.Encoder
	dec *json.Decoder
	// within bounds each batch, the holder's dial of the host included:
	// what the command's own pool would allow it (ConnectTimeout per hop).
	within time.Duration
	broken bool
}

// Files is name's FileReader through the holder, reopened if the last
// one broke.
func (m *Client) Files(ctx context.Context, name string, within time.Duration) (transport.FileReader, error) {
	m.mu.Lock()
	f := m.files[name]
	m.mu.Unlock()
	if f != nil {
		f.mu.Lock()
		broken := f.broken
		f.mu.Unlock()
		if !broken {
			return f, nil
		}
	}
	ch, err := m.open(ctx, muxFiles, name)
	if err != nil {
		return nil, fmt.Errorf("read files of %s through mux: %w", name, err)
	}
	f = &fileReader{ch: ch, enc: json.NewEncoder(ch), dec: json.NewDecoder(ch), within: within}
	m.mu.Lock()
	m.files[name] = f
	m.mu.Unlock()
	return f, nil
}

// Batch sends qs to the holder as one request, which it answers with
// their sftp requests in flight together.
func (f *fileReader) Batch(qs []transport.FileQuery) ([]transport.FileAnswer, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.broken {
		return nil, errors.New("files channel closed")
	}
	var a filesReply
	// A host that does not answer is given up as the pool gives up a
	// dial: closing the channel ends the wait.
	expired := time.AfterFunc(f.within, func() { f.ch.Close() })
	err := f.enc.Encode(filesRequest{Batch: qs})
	if err == nil {
		err = f.dec.Decode(&a)
	}
	if !expired.Stop() {
		err = fmt.Errorf("no answer within %s: %w", f.within, context.DeadlineExceeded)
	}
	if err != nil {
		f.broken = true
		f.ch.Close()
		return nil, fmt.Errorf("read files through mux: %w", err)
	}
	if a.Err != "" {
		return nil, fmt.Errorf("read files: %s", a.Err)
	}
	if len(a.Answers) != len(qs) {
		return nil, fmt.Errorf("read files through mux: %d answers to %d reads", len(a.Answers), len(qs))
	}
	return a.Answers, nil
}

func (f *fileReader) one(op, p string) (transport.FileAnswer, error) {
	a, err := f.Batch([]transport.FileQuery{{Op: op, Path: p}})
	if err != nil {
		return transport.FileAnswer{}, err
	}
	return a[0], nil
}

func (f *fileReader) Readlink(p string) (string, error) {
	a, err := f.one("readlink", p)
	return a.S, err
}

func (f *fileReader) Resolve(p string) (string, error) {
	a, err := f.one("resolve", p)
	return a.S, err
}

func (f *fileReader) Exists(p string) (bool, error) {
	a, err := f.one("exists", p)
	return a.B, err
}

func (f *fileReader) FirstLine(p string) (string, error) {
	a, err := f.one("firstline", p)
	return a.S, err
}
