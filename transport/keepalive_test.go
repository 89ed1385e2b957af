package transport

import (
	"context"
	"errors"
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
