package transport

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"

	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"

	"github.com/nix-hive/nix-hive/hostkey"
)

// testServer is an in-process SSH server for unit tests: it runs exec
// requests with the local sh, serves sftp, forwards direct-tcpip (so it can
// be a jump host) and can stall or die on demand. The lab, with real sshd,
// is where behaviour is proven; this keeps the unit tests fast and
// root-free.
type testServer struct {
	t       testing.TB
	ln      net.Listener
	host    string
	port    int
	signer  ssh.Signer
	hostKey string // authorized_keys form

	mu       sync.Mutex
	cond     *sync.Cond
	accepts  int
	execs    []string
	conns    []net.Conn
	stalled  bool
	closed   bool
	ciphers  []string    // what the next connections accept; nil: the defaults
	procDone chan string // commands whose process ended, for cancellation tests
}

type testKey struct {
	path   string
	signer ssh.Signer
}

// newClientKey writes an unencrypted ed25519 key in OpenSSH format.
func newClientKey(t testing.TB) testKey {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "test")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "id_ed25519")
	if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
	sg, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return testKey{path: path, signer: sg}
}

func newHostSigner(t testing.TB) ssh.Signer {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sg, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return sg
}

func newTestServer(t testing.TB, client ssh.PublicKey) *testServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &testServer{t: t, ln: ln, signer: newHostSigner(t), procDone: make(chan string, 100)}
	s.cond = sync.NewCond(&s.mu)
	host, port, _ := net.SplitHostPort(ln.Addr().String())
	s.host = host
	s.port, _ = strconv.Atoi(port)
	s.hostKey = hostkey.AuthorizedKey(s.signer.PublicKey())
	cfg := &ssh.ServerConfig{
		PublicKeyCallback: func(_ ssh.ConnMetadata, k ssh.PublicKey) (*ssh.Permissions, error) {
			if bytes.Equal(k.Marshal(), client.Marshal()) {
				return nil, nil
			}
			return nil, errors.New("unknown key")
		},
	}
	cfg.AddHostKey(s.signer)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.accepts++
			s.conns = append(s.conns, c)
			conf := cfg
			if s.ciphers != nil {
				c := *cfg
				c.Ciphers = s.ciphers
				conf = &c
			}
			s.mu.Unlock()
			go s.serve(&stallConn{Conn: c, s: s}, conf)
		}
	}()
	t.Cleanup(s.kill)
	return s
}

// endpoint is an Endpoint for this server with its key pinned.
func (s *testServer) endpoint(name string, key testKey) Endpoint {
	return Endpoint{Name: name, Host: s.host, Port: s.port, User: "tester", HostKeys: []string{s.hostKey},
		Options: map[string]string{"IdentityFile": key.path}}
}

func (s *testServer) addr() string { return net.JoinHostPort(s.host, strconv.Itoa(s.port)) }

func (s *testServer) acceptCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.accepts
}

func (s *testServer) execCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.execs)
}

// stall makes the server stop answering (as a hung host does) until
// unstall; reads already made are held back.
func (s *testServer) stall(on bool) {
	s.mu.Lock()
	s.stalled = on
	s.cond.Broadcast()
	s.mu.Unlock()
}

// kill closes the listener and every connection, like a host that died.
func (s *testServer) kill() {
	s.mu.Lock()
	s.closed = true
	s.stalled = false
	s.cond.Broadcast()
	conns := s.conns
	s.mu.Unlock()
	s.ln.Close()
	for _, c := range conns {
		c.Close()
	}
}

type stallConn struct {
	net.Conn
	s *testServer
}

func (c *stallConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.s.mu.Lock()
	for c.s.stalled {
		c.s.cond.Wait()
	}
	c.s.mu.Unlock()
	return n, err
}

func (s *testServer) serve(c net.Conn, cfg *ssh.ServerConfig) {
	sc, chans, reqs, err := ssh.NewServerConn(c, cfg)
	if err != nil {
		c.Close()
		return
	}
	defer sc.Close()
	go ssh.DiscardRequests(reqs) // keepalives get a "failure" reply, as from sshd
	for nc := range chans {
		switch nc.ChannelType() {
		case "session":
			ch, reqs, err := nc.Accept()
			if err != nil {
				continue
			}
			go s.session(ch, reqs)
		case "direct-tcpip":
			var msg struct {
				Host       string
				Port       uint32
				OriginHost string
				OriginPort uint32
			}
			if err := ssh.Unmarshal(nc.ExtraData(), &msg); err != nil {
				nc.Reject(ssh.ConnectionFailed, "bad request")
				continue
			}
			target, err := net.Dial("tcp", net.JoinHostPort(msg.Host, strconv.Itoa(int(msg.Port))))
			if err != nil {
				nc.Reject(ssh.ConnectionFailed, err.Error())
				continue
			}
			ch, reqs, err := nc.Accept()
			if err != nil {
				target.Close()
				continue
			}
			go ssh.DiscardRequests(reqs)
			go func() {
				io.Copy(ch, target)
				ch.CloseWrite()
			}()
			go func() {
				io.Copy(target, ch)
				target.Close()
				ch.Close()
			}()
		default:
			nc.Reject(ssh.UnknownChannelType, "no")
		}
	}
}

func (s *testServer) session(ch ssh.Channel, reqs <-chan *ssh.Request) {
	defer ch.Close()
	var (
		mu  sync.Mutex
		cmd *exec.Cmd
	)
	start := func(line string) bool {
		mu.Lock()
		defer mu.Unlock()
		if cmd != nil {
			return false
		}
		args := []string{"-c", line}
		if line == "" {
			args = nil // a shell request: sh reads commands from stdin
		}
		cmd = exec.Command("sh", args...)
		cmd.Stdin, cmd.Stdout, cmd.Stderr = ch, ch, ch.Stderr()
		// sshd makes each session's shell a session leader; Run's
		// cancellation relies on its process group.
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		if err := cmd.Start(); err != nil {
			return false
		}
		s.mu.Lock()
		s.execs = append(s.execs, line)
		s.mu.Unlock()
		go func() {
			err := cmd.Wait()
			s.procDone <- line
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
					sig := ws.Signal().String()
					ch.SendRequest("exit-signal", false, ssh.Marshal(struct {
						Signal     string
						CoreDumped bool
						Error      string
						Lang       string
					}{signalName(ws.Signal()), false, sig, ""}))
					ch.Close()
					return
				}
			}
			status := make([]byte, 4)
			binary.BigEndian.PutUint32(status, uint32(cmd.ProcessState.ExitCode()))
			ch.SendRequest("exit-status", false, status)
			ch.Close()
		}()
		return true
	}
	for req := range reqs {
		switch req.Type {
		case "exec":
			var msg struct{ Command string }
			ok := ssh.Unmarshal(req.Payload, &msg) == nil && start(msg.Command)
			req.Reply(ok, nil)
		case "shell":
			req.Reply(start(""), nil)
		case "subsystem":
			var msg struct{ Name string }
			if ssh.Unmarshal(req.Payload, &msg) != nil || msg.Name != "sftp" {
				req.Reply(false, nil)
				continue
			}
			req.Reply(true, nil)
			srv, err := sftp.NewServer(ch)
			if err != nil {
				return
			}
			go func() {
				srv.Serve()
				srv.Close()
			}()
		case "signal":
			var msg struct{ Signal string }
			ssh.Unmarshal(req.Payload, &msg)
			mu.Lock()
			if cmd != nil && cmd.Process != nil {
				if sig, ok := signalsByName[msg.Signal]; ok {
					cmd.Process.Signal(sig)
				}
			}
			mu.Unlock()
			req.Reply(true, nil)
		default:
			req.Reply(req.Type == "pty-req" || req.Type == "env" || req.Type == "window-change", nil)
		}
	}
	// The client closed the channel: do not leave its process behind.
	mu.Lock()
	if cmd != nil && cmd.Process != nil {
		cmd.Process.Kill()
	}
	mu.Unlock()
}

var signalsByName = map[string]syscall.Signal{"TERM": syscall.SIGTERM, "KILL": syscall.SIGKILL, "INT": syscall.SIGINT, "HUP": syscall.SIGHUP}

func signalName(sig syscall.Signal) string {
	for n, s := range signalsByName {
		if s == sig {
			return n
		}
	}
	return "KILL"
}
