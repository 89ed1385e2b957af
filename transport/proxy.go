package transport

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// proxyConn is a connection through a ProxyCommand: the command's stdout
// is what the host sends, its stdin what we send. Deadlines are not
// supported (handshake closes the conn when its context ends instead).
type proxyConn struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	stdout io.ReadCloser
	stderr *tailBuffer
	name   string
	once   sync.Once
	waited chan struct{}
	err    error // the command's exit, once waited is closed
}

// dialProxy starts command (an expanded ProxyCommand) for instance name
// the way OpenSSH does, through the user's shell with exec, in a process
// group of its own so that closing the connection stops whatever it
// started.
func dialProxy(name, command string) (*proxyConn, error) {
	sh := os.Getenv("SHELL")
	if sh == "" {
		sh = "/bin/sh"
	}
	cmd := exec.Command(sh, "-c", "exec "+command)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, fmt.Errorf("ProxyCommand for %s: %w", name, err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("ProxyCommand for %s: %w", name, err)
	}
	c := &proxyConn{cmd: cmd, stdin: stdin, stdout: stdout, stderr: &tailBuffer{max: 4096}, name: name, waited: make(chan struct{})}
	cmd.Stderr = c.stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("ProxyCommand for %s (%s): %w", name, command, err)
	}
	go func() {
		c.err = cmd.Wait()
		close(c.waited)
	}()
	return c, nil
}

func (c *proxyConn) Read(b []byte) (int, error) {
	n, err := c.stdout.Read(b)
	if err != nil && n == 0 {
		return 0, c.failure(err)
	}
	return n, nil
}

func (c *proxyConn) Write(b []byte) (int, error) {
	n, err := c.stdin.Write(b)
	if err != nil {
		return n, c.failure(err)
	}
	return n, nil
}

// failure explains a broken pipe by the command's own end: its exit status
// and what it said on stderr, the only clue when an SSM session or a
// Teleport login fails.
func (c *proxyConn) failure(err error) error {
	select {
	case <-c.waited:
	case <-time.After(time.Second):
		return err
	}
	msg := strings.TrimSpace(c.stderr.String())
	switch {
	case c.err != nil && msg != "":
		return fmt.Errorf("ProxyCommand for %s: %v: %s", c.name, c.err, msg)
	case c.err != nil:
		return fmt.Errorf("ProxyCommand for %s: %w", c.name, c.err)
	case msg != "":
		return fmt.Errorf("ProxyCommand for %s ended: %s", c.name, msg)
	}
	if errors.Is(err, io.EOF) {
		return err // the host closed the connection, the command exited cleanly
	}
	return fmt.Errorf("ProxyCommand for %s: %w", c.name, err)
}

// Close stops the command and everything it started.
func (c *proxyConn) Close() error {
	c.once.Do(func() {
		c.stdin.Close()
		if c.cmd.Process != nil {
			_ = syscall.Kill(-c.cmd.Process.Pid, syscall.SIGTERM)
		}
		select {
		case <-c.waited:
		case <-time.After(5 * time.Second):
			_ = syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL)
			<-c.waited
		}
	})
	return nil
}

func (c *proxyConn) LocalAddr() net.Addr                { return proxyAddr(c.name) }
func (c *proxyConn) RemoteAddr() net.Addr               { return proxyAddr(c.name) }
func (c *proxyConn) SetDeadline(t time.Time) error      { return errors.ErrUnsupported }
func (c *proxyConn) SetReadDeadline(t time.Time) error  { return errors.ErrUnsupported }
func (c *proxyConn) SetWriteDeadline(t time.Time) error { return errors.ErrUnsupported }

type proxyAddr string

func (a proxyAddr) Network() string { return "proxycommand" }
func (a proxyAddr) String() string  { return string(a) }

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
	max int
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf.Write(p)
	if over := t.buf.Len() - t.max; over > 0 {
		t.buf.Next(over)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.buf.String()
}

var _ net.Conn = (*proxyConn)(nil)

// dialDirect reaches an endpoint without a jump host: through its
// ProxyCommand when the user's config has one, else over TCP.
func dialDirect(ctx context.Context, s *settings) (net.Conn, string, error) {
	if s.ProxyCommand != "" {
		c, err := dialProxy(s.Name, s.ProxyCommandLine())
		return c, "ProxyCommand", err
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", s.Addr())
	return c, "", err
}
