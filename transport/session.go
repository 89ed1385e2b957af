package transport

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/term"
)

// Run runs cmd, a shell command line (quote its parts with shell.Quote or
// shell.QuoteArgs), on the instance over the pooled connection. stdin may be
// nil (the command sees EOF); nil stdout or stderr discard that stream.
//
// A command that ran and exited non-zero is reported by exitCode with a nil
// err (128+N when killed by signal N); err is only for failures to run or
// to learn the outcome (then exitCode is -1).
//
// When ctx ends, Run returns ctx's error at once and the remote command is
// stopped: SIGTERM by signal request, the session closed, and SIGTERM to
// its whole process group from a second session (OpenSSH ignores signal
// requests on root logins). Output arriving later is dropped rather than
// written to stdout or stderr.
func (p *Pool) Run(ctx context.Context, name, cmd string, stdin io.Reader, stdout, stderr io.Writer) (exitCode int, err error) {
	return p.withSession(ctx, name, stdin, stdout, stderr, func(c *conn, s *ssh.Session, errOut *gated) (int, error) {
		return p.start(ctx, name, cmd, c, s, errOut)
	})
}

// withSession opens a session on the pooled connection with stdin and
// gated stdout and stderr, and runs fn with it; the session and its slot
// are released when fn returns.
func (p *Pool) withSession(ctx context.Context, name string, stdin io.Reader, stdout, stderr io.Writer,
	fn func(c *conn, s *ssh.Session, errOut *gated) (int, error)) (int, error) {
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
	return fn(c, s, errOut)
}

// start runs cmd in s, behind the probe that reports its process group,
// and waits for it.
func (p *Pool) start(ctx context.Context, name, cmd string, c *conn, s *ssh.Session, errOut *gated) (int, error) {
	var pids *pidFilter
	line := cmd
	if !p.hosts.cfg.RawCommands && strings.TrimSpace(cmd) != "" {
		pids = &pidFilter{w: errOut.writer(), ready: make(chan struct{})}
		s.Stderr = pids
		line = pidProbe + "\n" + cmd
	}
	if err := s.Start(line); err != nil {
		return -1, fmt.Errorf("run on %s: %w", name, err)
	}
	return p.wait(ctx, name, c, s, pids)
}

// pidProbe reports the process group of the command on stderr before the
// command starts: sshd makes each session's shell a session (and so
// process group) leader, and the fifth field of the shell's own
// /proc/self/stat is that group. It uses only builtins (read, echo), in a
// syntax bash, dash, zsh and fish share, so it starts no process: a probe
// that ran `sh -c 'echo $PPID'` cost every session an extra fork and exec,
// about a third of a short command's cost on the host, and kept the login
// shell from exec'ing the command itself. It runs in the shell that then
// runs the command line, so it sets only two variables, named so that a
// command line's own $p or $g is not the probe's. (Without /proc, which no NixOS
// host lacks, read's complaint comes before the marker and the filter
// passes everything on: the group is unknown, as with RawCommands.)
const (
	pidMarker = "nix-hive-pid:"
	pidProbe  = `read nh nh nh nh nhg nh </proc/self/stat; echo ` + pidMarker + `$nhg >&2`
)

// pidFilter takes the probe's line off the front of stderr and passes the
// rest through; if stderr does not start with it, nothing is taken.
type pidFilter struct {
	mu    sync.Mutex
	w     io.Writer // nil discards
	buf   []byte
	done  bool
	ready chan struct{} // closed once done
	pid   int
}

func (f *pidFilter) Write(b []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := len(b)
	if !f.done {
		f.buf = append(f.buf, b...)
		i := bytes.IndexByte(f.buf, '\n')
		prefix := f.buf
		if i >= 0 {
			prefix = f.buf[:i]
		}
		if !bytes.HasPrefix(prefix, []byte(pidMarker)) && !bytes.HasPrefix([]byte(pidMarker), prefix) {
			b, f.done = f.buf, true // not our line: pass everything on
		} else if i < 0 {
			if len(f.buf) < 64 {
				return n, nil
			}
			b, f.done = f.buf, true
		} else {
			if v := string(prefix[len(pidMarker):]); v == "" {
				b = f.buf[i+1:] // the shell read no group (an empty field): unknown
			} else if pid, err := strconv.Atoi(v); err == nil && pid > 1 {
				f.pid = pid
				b = f.buf[i+1:]
			} else {
				b = f.buf
			}
			f.done = true
		}
		f.buf = nil
		if f.done {
			close(f.ready)
		}
	}
	if f.w != nil && len(b) > 0 {
		if _, err := f.w.Write(b); err != nil {
			return 0, err
		}
	}
	return n, nil
}

// processGroup waits for the probe's line (stderr is copied by its own
// goroutine, so it may lag behind stdout) and returns the group, 0 if
// unknown.
func (f *pidFilter) processGroup(ctx context.Context, ended <-chan error) int {
	select {
	case <-f.ready:
	default:
		select {
		case <-f.ready:
		case <-ctx.Done():
			return 0
		case <-ended:
			// Wait returns once stderr is copied: the probe's line is
			// in, or never comes.
			select {
			case <-f.ready:
			default:
				return 0
			}
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.pid
}

// wait waits for the session's exit status, or for ctx.
func (p *Pool) wait(ctx context.Context, name string, c *conn, s *ssh.Session, pids *pidFilter) (int, error) {
	done := make(chan error, 1)
	p.goTracked(func() { done <- s.Wait() })
	select {
	case err := <-done:
		return exitStatus(name, err)
	case <-ctx.Done():
		_ = s.Signal(ssh.SIGTERM)
		if pids != nil {
			// The probe's line may still be on its way: the host copies
			// stdout and stderr apart, so the command's output can
			// overtake it, and closing the session now would lose the
			// group to kill (a shell killed by the signal leaves its
			// children running).
			t := time.NewTimer(cmp.Or(p.hosts.cfg.ConnectTimeout, DefaultConnectTimeout))
			select {
			case <-pids.ready:
			case err := <-done:
				done <- err // killGroup reads it too
			case <-t.C:
			}
			t.Stop()
		}
		s.Close()
		if pids != nil {
			p.killGroup(c, pids, done)
		}
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

// killGroup sends SIGTERM to a command's remote process group from a new
// session on the same connection, in the background so the caller returns
// at once. A dead connection is not redialed for it: its sessions are gone.
// A session that ended (ended: its Wait returned) before its probe said
// the group never ran the command: nothing is waited for, nor killed.
func (p *Pool) killGroup(c *conn, pids *pidFilter, ended <-chan error) {
	if !p.conns.unlessClosed(func() {
		p.wg.Add(1)
		p.kills.Add(1)
	}) {
		return
	}
	go func() {
		defer p.wg.Done()
		defer p.kills.Done()
		ctx, cancel := context.WithTimeout(p.ctx, p.hosts.cfg.ConnectTimeout)
		defer cancel()
		pgid := pids.processGroup(ctx, ended)
		if pgid <= 0 {
			return
		}
		select {
		case c.sessions <- struct{}{}:
		case <-ctx.Done():
			return
		}
		defer func() { <-c.sessions }()
		s, err := p.newSession(ctx, c.client)
		if err != nil {
			return
		}
		defer s.Close()
		stop := context.AfterFunc(ctx, func() { s.Close() })
		defer stop()
		_ = s.Run(fmt.Sprintf("kill -s TERM -- -%d 2>/dev/null", pgid))
	}()
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
	return p.withSession(ctx, name, stdin, stdout, stderr, func(c *conn, s *ssh.Session, _ *gated) (int, error) {
		restore, err := terminal(name, s, t)
		if err != nil {
			return -1, err
		}
		defer restore()
		if t.Command != "" {
			err = s.Start(t.Command)
		} else {
			err = s.Shell()
		}
		if err != nil {
			return -1, fmt.Errorf("start shell on %s: %w", name, err)
		}
		return p.wait(ctx, name, c, s, nil)
	})
}

// terminal puts the local terminal (if t.In is one) in raw mode and asks
// for a remote pty of its size that follows it; restore undoes it.
func terminal(name string, s *ssh.Session, t Terminal) (restore func(), err error) {
	if t.In == nil || !term.IsTerminal(int(t.In.Fd())) {
		return func() {}, nil
	}
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
		return nil, fmt.Errorf("request pty on %s: %w", name, err)
	}
	old, err := term.MakeRaw(fd)
	if err != nil {
		return nil, fmt.Errorf("raw mode for %s: %w", t.In.Name(), err)
	}
	stop := followWindowSize(fd, s)
	return func() {
		stop()
		term.Restore(fd, old)
	}, nil
}

// RunFresh runs cmd like Run, but over a new connection to the instance
// made for this command and closed after it, never the pooled one (jump
// hosts are still reached through theirs). It proves that a new login
// works now: magic rollback confirms an activation this way, so a system
// that broke sshd or the network cannot be confirmed through a connection
// made before it was activated.
func (p *Pool) RunFresh(ctx context.Context, name, cmd string, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	if _, ok := p.hosts.endpoints[name]; !ok {
		return -1, fmt.Errorf("%w %q", ErrUnknownInstance, name)
	}
	client, err := p.conns.fresh(ctx, name)
	if err != nil {
		return -1, err
	}
	defer client.Close()
	s, err := p.newSession(ctx, client)
	if err != nil {
		return -1, fmt.Errorf("run on %s: %w", name, err)
	}
	defer s.Close()
	out, errOut := gate(stdout), gate(stderr)
	defer out.close()
	defer errOut.close()
	s.Stdin, s.Stdout, s.Stderr = stdin, out.writer(), errOut.writer()
	done := make(chan error, 1)
	p.goTracked(func() { done <- s.Run(cmd) })
	select {
	case err := <-done:
		return exitStatus(name, err)
	case <-ctx.Done():
		return -1, fmt.Errorf("run on %s: %w", name, ctx.Err())
	}
}

// Reset closes the pooled connection to the instance, if there is one, so
// that the next use dials anew: after a reboot, a connection may be dead
// without anything having noticed yet. Commands running on it fail.
// Through a holder, the holder drops its connection too.
func (p *Pool) Reset(name string) {
	p.Release(name)
	if h := p.holder.loaded(); h != nil {
		h.Reset(name)
	}
}

// Release closes the pooled connection to the instance, if there is one:
// the command is done with the host, and holds neither its connection
// nor its keepalives any longer. A holder keeps its own connection.
func (p *Pool) Release(name string) {
	if c := p.conns.forget(name); c != nil {
		c.client.Close()
	}
}

// Reached is the address the last connection to instance name reached
// (of its several, the first that answered), "" before one.
func (p *Pool) Reached(name string) string { return p.hosts.reachedAddr(name) }

// ThroughMux says whether the pool goes through a holder: one it was
// given, or one it starts when it first connects (Config.StartHolder).
func (p *Pool) ThroughMux() bool { return p.holder.loaded() != nil || p.hosts.cfg.StartHolder != nil }

// FileReader reads a host's links and small files (see Reader), one at
// a time or in a batch.
type FileReader interface {
	fileMethods
	Batch(qs []FileQuery) ([]FileAnswer, error)
}

// Files reads the instance's files over its sftp session: the pool's own,
// or the holder's, which outlives the command.
func (p *Pool) Files(ctx context.Context, name string) (FileReader, error) {
	if p.holder.through(name) {
		if _, ok := p.hosts.endpoints[name]; !ok {
			return nil, fmt.Errorf("%w %q", ErrUnknownInstance, name)
		}
		return p.holder.loaded().Files(ctx, name, p.hosts.DialBound(name))
	}
	sc, err := p.SFTP(ctx, name)
	if err != nil {
		return nil, err
	}
	return sc.Reader(), nil
}
