package host

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
)

// A deploy lock taken through the agent (a root login's installed one,
// or a non-root login's through sudo) holds an SSH session for as long as
// nix-hive works on the host. Its command, lockProgram, also runs the
// agent's operations it is sent on its stdin while it holds the lock, one
// at a time: a consumer's substitution and its job's start then travel in
// the lock's session instead of two sessions of their own, which is what
// an SSH session costs (a channel, a login shell, the framing of three
// layers of jump hosts) saved twice per host.
//
// The request is a line "run TOKEN N" and N lines, the operation and its
// arguments; the agent's operation runs with no stdin, its stdout and
// stderr are the session's, and the lock's program ends each with a line
// "TOKEN CODE" on both. Only the agent's operations run there: what sudo
// allows a non-root login through the agent stays all it can do.

// errNoSession means an operation cannot go through the host's lock
// session (there is none, it is busy or broken, or an argument would not
// fit on a line): it runs in a session of its own instead.
var errNoSession = errors.New("no lock session to run it in")

// opSession is a held lock's way to run the agent's operations.
type opSession struct {
	mu    sync.Mutex // one operation at a time
	stdin io.Writer
	out   *opStream
	errs  *opStream
	// end ends the lock's command (and its process group on the host)
	// when an operation is abandoned: the only way to stop it.
	end    context.CancelFunc
	broken bool
}

// opEnd is how an operation ended: its exit status, or why its end
// could not be read.
type opEnd struct {
	code int
	err  error
}

// do runs the agent's operation argv[0] with argv[1:] in the session.
// Ending ctx ends the operation and, with it, the lock.
func (s *opSession) do(ctx context.Context, argv []string, stdout, stderr io.Writer) (int, error) {
	if s == nil || !s.mu.TryLock() {
		return 0, errNoSession
	}
	defer s.mu.Unlock()
	if s.broken {
		return 0, errNoSession
	}
	for _, a := range argv {
		if strings.ContainsAny(a, "\n\r") {
			return 0, errNoSession
		}
	}
	b := make([]byte, 8)
	rand.Read(b)
	tok := "op" + hex.EncodeToString(b)
	ends := []<-chan opEnd{s.out.begin(tok, stdout), s.errs.begin(tok, stderr)}
	req := fmt.Sprintf("run %s %d\n%s\n", tok, len(argv), strings.Join(argv, "\n"))
	// The write waits for the session to take it, which a stalled
	// connection may never do: Ctrl-C must not wait with it. Ending the
	// session closes the pipe, which ends the write.
	sent := make(chan error, 1)
	go func() {
		_, err := io.WriteString(s.stdin, req)
		sent <- err
	}()
	select {
	case err := <-sent:
		if err != nil {
			s.abandon()
			return 0, fmt.Errorf("send %s to the lock's session: %w", argv[0], err)
		}
	case <-ctx.Done():
		s.abandon()
		return 0, context.Cause(ctx)
	}
	code := 0
	for _, ch := range ends {
		select {
		case <-ctx.Done():
			s.abandon()
			return 0, context.Cause(ctx)
		case e := <-ch:
			if e.err != nil {
				s.abandon()
				return 0, fmt.Errorf("%s in the lock's session: %w", argv[0], e.err)
			}
			code = e.code
		}
	}
	return code, nil
}

// abandon ends the session: an operation that was cut off cannot be
// told from the next one's output, and stopping it takes ending its
// process group, the lock's.
func (s *opSession) abandon() {
	s.broken = true
	s.end()
}

// opStream splits one of the lock session's output streams into the
// current operation's output and the line that ends it. Between
// operations (and before the first) lines go to idle.
type opStream struct {
	mu      sync.Mutex
	idle    io.Writer
	w       io.Writer
	tok     string
	ended   chan opEnd
	pending []byte
	closed  error
}

func newOpStream(idle io.Writer) *opStream { return &opStream{idle: idle} }

// begin directs lines to w until the line ending with "tok CODE".
func (o *opStream) begin(tok string, w io.Writer) <-chan opEnd {
	o.mu.Lock()
	defer o.mu.Unlock()
	ch := make(chan opEnd, 1)
	if o.closed != nil {
		ch <- opEnd{err: o.closed}
		return ch
	}
	if w == nil {
		w = io.Discard
	}
	o.w, o.tok, o.ended = w, tok, ch
	return ch
}

func (o *opStream) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.pending = append(o.pending, p...)
	for {
		i := strings.IndexByte(string(o.pending), '\n')
		if i < 0 {
			return len(p), nil
		}
		o.line(string(o.pending[:i+1]))
		o.pending = o.pending[i+1:]
	}
}

// line handles one whole line. An operation whose output does not end
// with a newline has the end line appended to its last one.
func (o *opStream) line(l string) {
	if o.tok == "" {
		o.idle.Write([]byte(l))
		return
	}
	if i := strings.LastIndex(l, o.tok+" "); i >= 0 {
		if code, err := strconv.Atoi(strings.TrimSpace(l[i+len(o.tok)+1:])); err == nil {
			o.w.Write([]byte(l[:i]))
			o.ended <- opEnd{code: code}
			o.tok, o.w = "", nil
			return
		}
	}
	o.w.Write([]byte(l))
}

// close says the stream ended: an operation waiting for its end line
// fails with err.
func (o *opStream) close(err error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.pending) > 0 {
		o.line(string(o.pending))
		o.pending = nil
	}
	o.closed = err
	if o.tok != "" {
		o.ended <- opEnd{err: err}
		o.tok, o.w = "", nil
	}
}

// agentArgv is root's operation prog with args as the agent's argv, when
// user's root commands on the host are the agent's; nil otherwise.
func agentArgv(prog, user string, esc escalation, args ...string) []string {
	op, ok := agentOps[prog]
	if !ok || !esc.viaAgent(user) {
		return nil
	}
	return append([]string{op}, args...)
}

// through runs cmd on a host, or argv (the same, as the agent's
// operation) in the host's held lock's session when it has one that can
// take it.
func (p *Privilege) through(remote Runner, argv []string) runFunc {
	return func(ctx context.Context, n, cmd string, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
		if argv != nil && stdin == nil {
			code, err := p.session(n).do(ctx, argv, stdout, stderr)
			if !errors.Is(err, errNoSession) {
				return code, err
			}
		}
		return remote.Run(ctx, n, cmd, stdin, stdout, stderr)
	}
}

// hold records l as host's held lock whose session takes operations.
func (p *Privilege) hold(host string, l *DeployLock) {
	if p == nil || l == nil || l.ops == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.sessions == nil {
		p.sessions = map[string]*DeployLock{}
	}
	p.sessions[host] = l
}

// session is host's held lock's session, nil when there is none.
func (p *Privilege) session(host string) *opSession {
	if p == nil {
		return nil
	}
	p.mu.Lock()
	l := p.sessions[host]
	p.mu.Unlock()
	if l == nil || l.released() {
		return nil
	}
	return l.ops
}
