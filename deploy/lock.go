package deploy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/nix-hive/nix-hive/eval"
)

// ErrHostLocked means another deploy holds the host.
var ErrHostLocked = errors.New("host is locked by another deploy")

// hostLock is a held deploy lock on a host: a remote flock that lives as
// long as the command holding it, whose stdin is ours. Closing stdin (or
// losing the connection) releases it, so a crashed nix-hive never leaves a
// host locked.
type hostLock struct {
	stdin *io.PipeWriter
	done  chan struct{}
}

// lockHost takes the deploy lock of host n for owner, or fails at once
// with who holds it. It returns what the host runs, read under the lock.
func lockHost(ctx context.Context, remote Remote, n, user string, esc escalation, owner string) (*hostLock, HostState, error) {
	pr, pw := io.Pipe()
	outR, outW := io.Pipe()
	l := &hostLock{stdin: pw, done: make(chan struct{})}
	type result struct {
		code int
		err  error
	}
	res := make(chan result, 1)
	var stderr lockedBuffer
	// The lock outlives a first Ctrl-C, like the activations it guards;
	// release ends it.
	lctx := context.WithoutCancel(ctx)
	go func() {
		defer close(l.done)
		code, err := remote.Run(lctx, n, program(lockProgram, true, user, esc, owner), pr, outW, &stderr)
		outW.Close()
		pr.Close()
		res <- result{code, err}
	}()
	// Until the lock is held, Ctrl-C stops waiting for it (and for the
	// connection it needs): the command above gives up on the host, and
	// a lock taken later is let go of at once, its stdin being closed.
	stop := context.AfterFunc(ctx, func() {
		pw.Close()
		outR.CloseWithError(fmt.Errorf("lock: %w", context.Cause(ctx)))
	})
	br := bufio.NewReader(outR)
	line, rerr := br.ReadString('\n')
	line = strings.TrimSpace(line)
	if !stop() {
		return nil, HostState{}, fmt.Errorf("connect %s and take its deploy lock: %w", n, context.Cause(ctx))
	}
	if rerr == nil && line == "locked" {
		var state strings.Builder
		for {
			ln, err := br.ReadString('\n')
			if err != nil || ln == "end\n" {
				rerr = err
				break
			}
			state.WriteString(ln)
		}
		go io.Copy(io.Discard, outR)
		if rerr == nil {
			return l, parseHostState(state.String()), nil
		}
		pw.Close()
		r := <-res
		return nil, HostState{}, fmt.Errorf("lock: %w", errors.Join(r.err, rerr))
	}
	go io.Copy(io.Discard, outR)
	pw.Close()
	r := <-res
	switch {
	case r.err != nil:
		return nil, HostState{}, fmt.Errorf("lock: %w", r.err)
	case r.code == 75:
		return nil, HostState{}, fmt.Errorf("%w: %s", ErrHostLocked, strings.TrimPrefix(line, "held by "))
	case needsPassword(stderr.String()):
		return nil, HostState{}, fmt.Errorf("lock: %w", ErrSudoPassword)
	case notAllowed(stderr.String()):
		return nil, HostState{}, fmt.Errorf("lock: %w: %s", errNotAllowed, lastLines(stderr.String(), 1))
	default:
		return nil, HostState{}, fmt.Errorf("lock: exit %d: %s", r.code, line)
	}
}

// lockAs takes in's deploy lock, becoming root with priv. When sudo there
// turns out to want a password, the password is asked (once for the run),
// checked on the host, and the lock taken again with it.
func lockAs(ctx context.Context, remote Remote, in *eval.Instance, priv *Privilege, owner string) (*hostLock, HostState, error) {
	n := in.Name
	if !needsPrivilege(in.User) {
		return lockHost(ctx, remote, n, in.User, escalation{}, owner)
	}
	if err := priv.probeAgent(ctx, remote, n); err != nil {
		return nil, HostState{}, fmt.Errorf("lock: %w", err)
	}
	if priv.usesPassword(n) {
		if err := priv.check(ctx, remote, n); err != nil {
			return nil, HostState{}, fmt.Errorf("lock: %w", err)
		}
	}
	l, hs, err := lockHost(ctx, remote, n, in.User, priv.For(n), owner)
	if errors.Is(err, errNotAllowed) {
		return nil, HostState{}, fmt.Errorf("%w%s", err, priv.agentMismatch(n))
	}
	if !errors.Is(err, ErrSudoPassword) || priv.usesPassword(n) {
		return l, hs, err
	}
	if err := priv.givePassword(n); err != nil {
		return nil, HostState{}, fmt.Errorf("lock: %w", err)
	}
	if err := priv.check(ctx, remote, n); err != nil {
		return nil, HostState{}, fmt.Errorf("lock: %w", err)
	}
	return lockHost(ctx, remote, n, in.User, priv.For(n), owner)
}

// release lets go of the lock and waits (briefly) for the remote holder
// to end.
// release lets go of the lock, and waits a moment for the host to say it
// did, so that a deploy started right after finds it free: at most a
// second (an unreachable host never answers; its sshd ends the holder
// with the connection), and not at all once ctx ended (Ctrl-C: the user
// is not waiting for that, and the next deploy's lock waits 3 seconds).
func (l *hostLock) release(ctx context.Context) {
	if l == nil {
		return
	}
	l.stdin.Close()
	select {
	case <-l.done:
	case <-ctx.Done():
	case <-time.After(time.Second):
	}
}
