package host

import (
	"bytes"
	"context"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/nix-hive/nix-hive/transport"
)

// Runner runs shell commands on instances.
type Runner interface {
	// Run runs cmd on the instance over its pooled connection; a non-zero
	// exit is exitCode with a nil error, err is for transport failures.
	Run(ctx context.Context, name, cmd string, stdin io.Reader, stdout, stderr io.Writer) (exitCode int, err error)
}

// Remote runs shell commands on instances (transport.Pool does).
type Remote interface {
	Runner
	// RunFresh runs cmd like Run but over a new connection made for it and
	// closed afterwards: it proves that a new login works now.
	RunFresh(ctx context.Context, name, cmd string, stdin io.Reader, stdout, stderr io.Writer) (exitCode int, err error)
	// Reset closes the pooled connection to the instance, if any, so the
	// next Run dials anew (after a reboot, say).
	Reset(name string)
	// Release says the command is done with the instance: its connection
	// need not be kept (a connection holder's may be).
	Release(name string)
}

// Hosts is a Remote that also opens the hosts' sftp sessions: what a
// deploy needs of its way to the hosts, key uploads included
// (transport.Pool).
type Hosts interface {
	Remote
	// SFTP is the instance's sftp session, opened on first use.
	SFTP(ctx context.Context, name string) (*transport.SFTP, error)
}

// Commands runs a policy's commands (ctx.run) over a Remote, as the
// login, verbatim: it implements starlark.Runner.
type Commands struct{ Remote Remote }

// Run runs cmd on instance and returns its output and exit status.
func (c Commands) Run(ctx context.Context, instance, cmd string) (string, string, int, error) {
	var o, e lockedBuffer
	code, err := c.Remote.Run(ctx, instance, cmd, nil, &o, &e)
	return o.String(), e.String(), code, err
}

// lockedBuffer collects a command's stdout and stderr together; the SSH
// session writes the two streams from different goroutines.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

// pause waits d, or less when ctx ends first.
func pause(ctx context.Context, d time.Duration) error {
	select {
	case <-time.After(d):
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
