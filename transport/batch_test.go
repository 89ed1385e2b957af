package transport

import (
	"bytes"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
)

// gatedConn is a connection whose writes wait for a gate and are
// counted: what the kernel's send would look like if it took a while.
type gatedConn struct {
	net.Conn
	mu     sync.Mutex
	writes [][]byte
	gate   chan struct{} // each write takes one token
	err    error
	ready  chan struct{} // a write has started
	closed chan struct{}
}

func newGatedConn() *gatedConn {
	return &gatedConn{gate: make(chan struct{}, 100), ready: make(chan struct{}, 100), closed: make(chan struct{})}
}

func (g *gatedConn) Write(p []byte) (int, error) {
	g.ready <- struct{}{}
	select {
	case <-g.gate:
	case <-g.closed:
		return 0, net.ErrClosed
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.err != nil {
		return 0, g.err
	}
	g.writes = append(g.writes, append([]byte(nil), p...))
	return len(p), nil
}

func (g *gatedConn) Close() error {
	select {
	case <-g.closed:
	default:
		close(g.closed)
	}
	return nil
}

func (g *gatedConn) written() [][]byte {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([][]byte(nil), g.writes...)
}

// readAll is what c's peer reads until the connection closes.
func readAll(c net.Conn) <-chan []byte {
	got := make(chan []byte, 1)
	go func() {
		all, _ := io.ReadAll(c)
		got <- all
	}()
	return got
}

func TestBatchConn(t *testing.T) {
	t.Run("a lone write leaves at once", func(t *testing.T) {
		g := newGatedConn()
		b := newBatchConn(g)
		defer b.Close()
		g.gate <- struct{}{}
		if _, err := b.Write([]byte("one")); err != nil {
			t.Fatal(err)
		}
		<-g.ready // no further write needed to make it go
	})
	t.Run("writes queued during a write leave together, in order", func(t *testing.T) {
		g := newGatedConn()
		b := newBatchConn(g)
		b.Write([]byte("a"))
		<-g.ready // "a" is on its way and held
		for _, s := range []string{"b", "c", "d"} {
			if _, err := b.Write([]byte(s)); err != nil {
				t.Fatal(err)
			}
		}
		g.gate <- struct{}{}
		<-g.ready
		g.gate <- struct{}{}
		b.Close()
		got := g.written()
		if len(got) != 2 || string(got[0]) != "a" || string(got[1]) != "bcd" {
			t.Errorf("writes %q, want [a bcd]", got)
		}
	})
	t.Run("a failed write fails the next ones", func(t *testing.T) {
		g := newGatedConn()
		g.err = errors.New("broken pipe")
		b := newBatchConn(g)
		defer b.Close()
		b.Write([]byte("x"))
		<-g.ready
		g.gate <- struct{}{}
		<-b.finished
		if _, err := b.Write([]byte("y")); err == nil || err.Error() != "broken pipe" {
			t.Errorf("write after a failure: %v, want broken pipe", err)
		}
	})
	t.Run("close lets what is queued leave", func(t *testing.T) {
		a, c := net.Pipe()
		b := newBatchConn(a)
		got := readAll(c)
		want := bytes.Repeat([]byte("0123456789"), 1000)
		for i := 0; i < len(want); i += 100 {
			b.Write(want[i : i+100])
		}
		b.Close()
		if all := <-got; !bytes.Equal(all, want) {
			t.Errorf("read %d bytes, want the %d written", len(all), len(want))
		}
	})
	t.Run("close does not wait for a peer that stopped reading", func(t *testing.T) {
		g := newGatedConn()
		b := newBatchConn(g)
		b.Write([]byte("stuck"))
		<-g.ready
		b.Close() // returns after closeFlush; the held write then fails
		<-b.finished
	})
	t.Run("concurrent writers' bytes arrive whole", func(t *testing.T) {
		a, c := net.Pipe()
		b := newBatchConn(a)
		got := readAll(c)
		var wg sync.WaitGroup
		for w := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range 250 {
					b.Write(bytes.Repeat([]byte{byte('a' + w)}, 8))
				}
			}()
		}
		wg.Wait()
		b.Close()
		all := <-got
		if len(all) != 4*250*8 {
			t.Fatalf("read %d bytes, want %d", len(all), 4*250*8)
		}
		for i := 0; i < len(all); i += 8 {
			if !bytes.Equal(all[i:i+8], bytes.Repeat(all[i:i+1], 8)) {
				t.Fatalf("a write was split at %d: %q", i, all[i:i+8])
			}
		}
	})
}
