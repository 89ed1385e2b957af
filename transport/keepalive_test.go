package transport

import (
	"bufio"
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/nix-hive/nix-hive/lab"
	"github.com/nix-hive/nix-hive/lab/labtest"
)

// A holder's connection is probed every KeepAlive while a command uses it
// and only every IdleKeepAlive while none does; one that goes silent
// (its host frozen) is dropped when an open on it times out, and the
// next open redials.
func TestIdleKeepAlive(t *testing.T) {
	hermetic(t)
	l := labtest.New(t, lab.Config{Hosts: 1})
	ctx := testCtx(t)
	h := l.Hosts[0]
	cfg := Config{Endpoints: labEndpoints(l, true)}
	cfg.KeepAlive, cfg.IdleKeepAlive, cfg.KeepAliveTimeout = 20*time.Millisecond, time.Hour, time.Minute
	p := newTestPool(t, cfg)
	ticks := make(chan bool, 1)
	p.conns.keepaliveTick = func(probed bool) {
		select {
		case ticks <- probed:
		default: // the test is not listening: keep the loop going
		}
	}
	next := func() bool {
		t.Helper()
		select {
		case probed := <-ticks:
			return probed
		case <-ctx.Done():
			t.Fatal("no keepalive tick")
			return false
		}
	}
	if _, err := p.Client(ctx, h.Name); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 5; i++ {
		if next() {
			t.Fatal("an idle connection was probed before IdleKeepAlive passed")
		}
	}
	ch, _, release, err := p.OpenChannel(ctx, h.Name, false, "session", nil)
	if err != nil {
		t.Fatal(err)
	}
	for !next() { // ticks from before the open, until the first probe
	}
	if !next() {
		t.Error("a connection in use was not probed at every tick")
	}
	ch.Close()
	release()
	for next() { // a tick that began before the release
	}
	for i := 0; i < 5; i++ {
		if next() {
			t.Fatal("a connection no longer in use was still probed at every tick")
		}
	}

	if err := h.Faults().Freeze(); err != nil {
		t.Fatal(err)
	}
	defer h.Faults().Thaw()
	short, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	_, _, _, err = p.OpenChannel(short, h.Name, false, "session", nil)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("open on a frozen host's connection = %v; want a timeout", err)
	}
	if n := p.Stats().Connected; n != 0 {
		t.Errorf("%d connections kept after an open on one timed out; want it dropped", n)
	}
	if err := h.Faults().Thaw(); err != nil {
		t.Fatal(err)
	}
	before := p.Stats().Direct
	ch, _, release, err = p.OpenChannel(ctx, h.Name, false, "session", nil)
	if err != nil {
		t.Fatalf("open after the host thawed: %v", err)
	}
	ch.Close()
	release()
	if after := p.Stats().Direct; after != before+1 {
		t.Errorf("open after the host thawed made %d connections; want 1 (a redial)", after-before)
	}
}

// A connection in use is probed only at a tick when its host said
// nothing since the last one, as OpenSSH's ServerAliveInterval does: a
// host streaming a job's heartbeats costs no keepalives.
func TestKeepAliveProbesOnlyASilentHost(t *testing.T) {
	hermetic(t)
	key := newClientKey(t)
	srv := newTestServer(t, key.signer.PublicKey())
	p := newTestPool(t, Config{
		Endpoints: map[string]Endpoint{"a": srv.endpoint("a", key)},
		KeepAlive: 20 * time.Millisecond, KeepAliveTimeout: time.Minute,
	})
	ctx := testCtx(t)
	// The loop waits in the hook until the test lets it go on, so what
	// the test does between two ticks happens between them.
	type tick struct {
		probed bool
		resume chan struct{}
	}
	ticks := make(chan tick)
	stop := make(chan struct{})
	defer close(stop)
	p.conns.keepaliveTick = func(probed bool) {
		tk := tick{probed, make(chan struct{})}
		select {
		case ticks <- tk:
			<-tk.resume
		case <-stop:
		}
	}
	next := func() tick {
		t.Helper()
		select {
		case tk := <-ticks:
			return tk
		case <-ctx.Done():
			t.Fatal("no keepalive tick")
			return tick{}
		}
	}

	stdin, in := io.Pipe()
	out, stdout := io.Pipe()
	ran := make(chan error, 1)
	go func() {
		_, err := p.Run(ctx, "a", "cat", stdin, stdout, io.Discard)
		stdout.Close()
		ran <- err
	}()
	lines := bufio.NewReader(out)
	echo := func() {
		t.Helper()
		if _, err := io.WriteString(in, "beat\n"); err != nil {
			t.Fatal(err)
		}
		if l, err := lines.ReadString('\n'); err != nil || l != "beat\n" {
			t.Fatalf("echo = %q, %v", l, err)
		}
	}
	echo()

	tk := next()
	for !tk.probed { // ticks that still heard the start of cat
		close(tk.resume)
		tk = next()
	}
	close(tk.resume)
	if tk = next(); !tk.probed {
		t.Error("a tick after one that heard nothing did not probe the silent host")
	}
	for i := 0; i < 3; i++ {
		echo() // the host speaks between two ticks
		close(tk.resume)
		if tk = next(); tk.probed {
			t.Errorf("heartbeat %d: a host that spoke since the last tick was probed", i)
		}
	}
	close(tk.resume)
	if tk = next(); !tk.probed {
		t.Error("the host went silent again, and was not probed")
	}
	close(tk.resume)
	in.Close()
	if err := <-ran; err != nil {
		t.Fatal(err)
	}
	if n := p.Stats().KeepAlives; n < 2 {
		t.Errorf("Stats().KeepAlives = %d; want the 2 probes seen", n)
	}
}
