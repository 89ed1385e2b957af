package deploy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
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
// with who holds it.
func lockHost(ctx context.Context, remote Remote, n, user, sudo, owner string) (*hostLock, error) {
	pr, pw := io.Pipe()
	outR, outW := io.Pipe()
	l := &hostLock{stdin: pw, done: make(chan struct{})}
	type result struct {
		code int
		err  error
	}
	res := make(chan result, 1)
	// The lock outlives a first Ctrl-C, like the activations it guards;
	// release ends it.
	lctx := context.WithoutCancel(ctx)
	go func() {
		defer close(l.done)
		code, err := remote.Run(lctx, n, program(lockProgram, true, user, sudo, owner), pr, outW, nil)
		outW.Close()
		pr.Close()
		res <- result{code, err}
	}()
	line, rerr := bufio.NewReader(outR).ReadString('\n')
	go io.Copy(io.Discard, outR)
	line = strings.TrimSpace(line)
	if rerr == nil && line == "locked" {
		return l, nil
	}
	pw.Close()
	r := <-res
	switch {
	case r.err != nil:
		return nil, fmt.Errorf("lock: %w", r.err)
	case r.code == 75:
		return nil, fmt.Errorf("%w: %s", ErrHostLocked, strings.TrimPrefix(line, "held by "))
	default:
		return nil, fmt.Errorf("lock: exit %d: %s", r.code, line)
	}
}

// release lets go of the lock and waits (briefly) for the remote holder
// to end.
func (l *hostLock) release() {
	if l == nil {
		return
	}
	l.stdin.Close()
	select {
	case <-l.done:
	case <-time.After(time.Second): // an unreachable host never answers; its sshd ends the holder with the connection
	}
}
