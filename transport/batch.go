package transport

import (
	"net"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/ssh"
)

// batchConn is a net.Conn whose writes return once queued: a goroutine
// of its own writes them out, and whatever was queued while it was
// writing leaves in its next write. A lone SSH packet goes out at once,
// as before (no delay, unlike Nagle's algorithm, which cost a single
// host 100 ms and more per round trip); packets written while one is on
// its way share a TCP segment, and on a tunnelled connection a channel
// message of the jump host's connection, instead of each paying the
// outer layers' framing and the IP and TCP headers. That is most of
// what a consumer's small messages cost the uplink inside three layers
// of SSH (docs/scale.md, issue 28).
type batchConn struct {
	net.Conn

	mu       sync.Mutex
	changed  sync.Cond
	queued   []byte
	spare    []byte
	err      error // the first failed write's, returned by every later Write
	closed   bool
	finished chan struct{} // the writer has ended

	heard atomic.Int64 // when Read last returned bytes (UnixNano)
}

// maxQueued bounds what Write queues before it waits for the writer:
// back-pressure as a blocking write would give, for a peer that reads
// slowly.
const maxQueued = 256 << 10

// closeFlush bounds how long Close waits for queued bytes to leave (a
// channel's EOF and close, say) before it closes the connection anyway:
// they leave in microseconds unless the peer stopped reading, and then
// waiting longer would only delay an interrupt.
const closeFlush = 100 * time.Millisecond

func newBatchConn(c net.Conn) *batchConn {
	b := &batchConn{Conn: c, finished: make(chan struct{})}
	b.changed.L = &b.mu
	go b.writer()
	return b
}

func (b *batchConn) Read(p []byte) (int, error) {
	n, err := b.Conn.Read(p)
	if n > 0 {
		b.heard.Store(time.Now().UnixNano())
	}
	return n, err
}

// heardConn is an SSH connection that tells when it last read from its
// host, so that keepalives probe only one that went silent.
type heardConn struct {
	ssh.Conn
	raw *batchConn
}

// lastHeard is when c last read something from its host: the zero time
// if it cannot tell (a connection the holder made).
func lastHeard(c *ssh.Client) time.Time {
	h, ok := c.Conn.(heardConn)
	if !ok {
		return time.Time{}
	}
	ns := h.raw.heard.Load()
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns)
}

func (b *batchConn) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for len(b.queued) >= maxQueued && b.err == nil && !b.closed {
		b.changed.Wait()
	}
	switch {
	case b.err != nil:
		return 0, b.err
	case b.closed:
		return 0, net.ErrClosed
	}
	b.queued = append(b.queued, p...)
	b.changed.Broadcast()
	return len(p), nil
}

func (b *batchConn) writer() {
	defer close(b.finished)
	b.mu.Lock()
	defer b.mu.Unlock()
	for {
		for len(b.queued) == 0 && !b.closed {
			b.changed.Wait()
		}
		if len(b.queued) == 0 {
			return // closed, and everything written
		}
		out := b.queued
		b.queued, b.spare = b.spare[:0], nil
		b.mu.Unlock()
		_, err := b.Conn.Write(out)
		b.mu.Lock()
		b.spare = out[:0]
		if err != nil {
			b.err, b.queued = err, nil
			b.changed.Broadcast()
			return
		}
		b.changed.Broadcast()
	}
}

// Close lets what is queued leave (for at most closeFlush), then closes
// the connection.
func (b *batchConn) Close() error {
	b.mu.Lock()
	b.closed = true
	b.changed.Broadcast()
	b.mu.Unlock()
	select {
	case <-b.finished:
	case <-time.After(closeFlush):
	}
	return b.Conn.Close()
}
