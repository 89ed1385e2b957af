package transport

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"

	"golang.org/x/crypto/ssh"
	"golang.org/x/term"
)

// Run runs cmd, a shell command line (quote its parts with Quote or
// QuoteArgs), on the instance over the pooled connection. stdin may be
// nil (the command sees EOF); nil stdout or stderr discard that stream.
//
// A command that ran and exited non-zero is reported by exitCode with a nil
// err (128+N when killed by signal N); err is only for failures to run or
// to learn the outcome (then exitCode is -1). When ctx ends, the remote
// command gets SIGTERM, the session is closed and Run returns ctx's error
// at once; output arriving later is dropped rather than written to stdout
// or stderr.
func (p *Pool) Run(ctx context.Context, name, cmd string, stdin io.Reader, stdout, stderr io.Writer) (exitCode int, err error) {
	c, s, release, err := p.session(ctx, name)
	if err != nil {
		return -1, err
	}
	defer release()
	defer s.Close()
	out, errOut := gate(stdout), gate(stderr)
	defer out.close()
	defer errOut.close()
	s.Stdin = stdin
	s.Stdout, s.Stderr = out.writer(), errOut.writer()
	if err := s.Start(cmd); err != nil {
		return -1, fmt.Errorf("run on %s: %w", name, err)
	}
	return wait(ctx, name, c, s)
}

// wait waits for the session's exit status, or for ctx.
func wait(ctx context.Context, name string, c *conn, s *ssh.Session) (int, error) {
	done := make(chan error, 1)
	go func() { done <- s.Wait() }()
	select {
	case err := <-done:
		return exitStatus(name, err)
	case <-ctx.Done():
		_ = s.Signal(ssh.SIGTERM)
		s.Close()
		return -1, fmt.Errorf("run on %s: %w", name, ctx.Err())
	case <-c.done:
		// The connection died; Wait may still be unblocking.
		select {
		case err := <-done:
			return exitStatus(name, err)
		default:
			return -1, fmt.Errorf("run on %s: connection lost", name)
		}
	}
}

func exitStatus(name string, err error) (int, error) {
	if err == nil {
		return 0, nil
	}
	var ee *ssh.ExitError
	if errors.As(err, &ee) {
		return ee.ExitStatus(), nil
	}
	var missing *ssh.ExitMissingError
	if errors.As(err, &missing) {
		return -1, fmt.Errorf("run on %s: connection lost before the command reported its exit status", name)
	}
	return -1, fmt.Errorf("run on %s: %w", name, err)
}

// Output runs cmd like Run and returns what it wrote. On a transport error
// the output collected so far is returned with it.
func (p *Pool) Output(ctx context.Context, name, cmd string) (stdout, stderr []byte, exitCode int, err error) {
	// Run writes nothing after it returns, so the buffers are ours then.
	var o, e bytes.Buffer
	exitCode, err = p.Run(ctx, name, cmd, nil, &o, &e)
	return o.Bytes(), e.Bytes(), exitCode, err
}

// gated forwards writes until closed and drops them afterwards, so a
// session that outlives Run never writes into the caller's buffers.
type gated struct {
	mu     sync.Mutex
	w      io.Writer
	closed bool
}

func gate(w io.Writer) *gated { return &gated{w: w} }

// writer returns nil for a nil target, which the ssh package discards.
func (g *gated) writer() io.Writer {
	if g.w == nil {
		return nil
	}
	return g
}

func (g *gated) Write(b []byte) (int, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return len(b), nil
	}
	return g.w.Write(b)
}

func (g *gated) close() {
	g.mu.Lock()
	g.closed = true
	g.mu.Unlock()
}

// Terminal describes the local side of an interactive session.
type Terminal struct {
	// In is the local terminal, usually os.Stdin. When it is a terminal,
	// Shell puts it in raw mode, requests a remote pty of its size and
	// follows window size changes; otherwise no pty is requested (ssh -T).
	In *os.File
	// Term is TERM for the remote pty; "" means $TERM, else xterm-256color.
	Term string
	// Command runs instead of the login shell (like ssh -t HOST CMD).
	Command string
}

// Shell runs an interactive login shell (or term.Command) on the instance
// with the given streams and returns its exit status, under the same rules
// as Run. The local terminal is restored before Shell returns.
func (p *Pool) Shell(ctx context.Context, name string, stdin io.Reader, stdout, stderr io.Writer, t Terminal) (int, error) {
	c, s, release, err := p.session(ctx, name)
	if err != nil {
		return -1, err
	}
	defer release()
	defer s.Close()
	out, errOut := gate(stdout), gate(stderr)
	defer out.close()
	defer errOut.close()
	s.Stdin = stdin
	s.Stdout, s.Stderr = out.writer(), errOut.writer()

	if t.In != nil && term.IsTerminal(int(t.In.Fd())) {
		fd := int(t.In.Fd())
		w, h, err := term.GetSize(fd)
		if err != nil {
			w, h = 80, 24
		}
		tt := t.Term
		if tt == "" {
			tt = os.Getenv("TERM")
		}
		if tt == "" {
			tt = "xterm-256color"
		}
		modes := ssh.TerminalModes{ssh.ECHO: 1, ssh.TTY_OP_ISPEED: 38400, ssh.TTY_OP_OSPEED: 38400}
		if err := s.RequestPty(tt, h, w, modes); err != nil {
			return -1, fmt.Errorf("request pty on %s: %w", name, err)
		}
		old, err := term.MakeRaw(fd)
		if err != nil {
			return -1, fmt.Errorf("raw mode for %s: %w", t.In.Name(), err)
		}
		defer term.Restore(fd, old)
		stop := followWindowSize(fd, s)
		defer stop()
	}
	if t.Command != "" {
		err = s.Start(t.Command)
	} else {
		err = s.Shell()
	}
	if err != nil {
		return -1, fmt.Errorf("start shell on %s: %w", name, err)
	}
	return wait(ctx, name, c, s)
}
