package deploy

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"
)

// jobSpec is an activation job for one host (see job.sh).
type jobSpec struct {
	goal Goal
	// target is a store path, "previous" (the profile's previous
	// generation) or "restore:ID" (what ran before job ID).
	target string
	// confirm > 0 arms magic rollback: unless confirmed over a new SSH
	// connection within confirm, the host returns to what ran before.
	confirm time.Duration
}

// jobs runs activation jobs on hosts: it starts them detached, follows
// them across dropped connections and confirms them.
type jobs struct {
	remote Remote
	// limit bounds one switch-to-configuration on the host.
	limit time.Duration
	// reconnect is how long contact with a host may be lost before the
	// job's outcome is declared unknown.
	reconnect time.Duration
	// connect bounds one attempt to confirm over a new connection.
	connect time.Duration
	event   func(n string, step Step, status EventStatus, msg string)
}

// errLostContact means nix-hive could not reach a host for longer than
// the reconnect window while a job ran there; the job goes on.
var errLostContact = errors.New("lost contact")

// run starts spec on host n (as user, with sudo for non-root) and returns
// the job's end state. An error means the outcome is not known: contact
// was lost, or ctx ended (the second Ctrl-C); the job's id is in it.
func (j *jobs) run(ctx context.Context, n, user, sudo string, spec jobSpec) (jobState, error) {
	id := newJobID()
	if err := j.start(ctx, n, user, sudo, id, spec); err != nil {
		return jobState{id: id}, err
	}
	st, err := j.follow(ctx, n, id, "activated")
	st.id = id
	if err != nil || st.phase != "activated" {
		return j.settled(n, id, st, err)
	}
	cerr := j.confirm(ctx, n, user, sudo, id, spec.confirm)
	st, err = j.follow(ctx, n, id, "")
	st.id = id
	if err == nil && st.status == "rolled-back" && cerr != nil {
		st.reason += "; last attempt: " + cerr.Error()
	}
	return j.settled(n, id, st, err)
}

func (j *jobs) settled(n, id string, st jobState, err error) (jobState, error) {
	switch {
	case err != nil:
		return st, &jobError{id: id, host: n, err: err}
	case st.phase == "lost":
		return st, &jobError{id: id, host: n, err: fmt.Errorf("the job ended without an outcome: %s", st)}
	}
	return st, nil
}

// jobError: the outcome of job id on host is not known.
type jobError struct {
	id, host string
	err      error
}

func (e *jobError) Error() string {
	return fmt.Sprintf("activation job %s on %s: %v; it finishes on the host (unconfirmed, it returns to the previous system)", e.id, e.host, e.err)
}
func (e *jobError) Unwrap() error { return e.err }

func newJobID() string {
	b := make([]byte, 6)
	rand.Read(b)
	return time.Now().UTC().Format("20060102T150405") + "-" + hex.EncodeToString(b)
}

func secs(d time.Duration) string {
	return strconv.Itoa(max(int((d+time.Second-1)/time.Second), 0))
}

// start sends the job to the host and starts it. A connection lost while
// starting leaves it unclear whether the job runs; following it tells.
func (j *jobs) start(ctx context.Context, n, user, sudo, id string, spec jobSpec) error {
	cmd := program(startProgram, true, user, sudo, id, string(spec.goal), spec.target, secs(spec.confirm), secs(j.limit))
	out := &lockedBuffer{}
	code, err := j.remote.Run(ctx, n, cmd, strings.NewReader(jobScript), out, out)
	if err == nil && code != 0 {
		return fmt.Errorf("start activation: exit %d: %s", code, lastLines(out.String(), 3))
	}
	if err != nil {
		if ctx.Err() != nil {
			return err
		}
		st, ferr := j.follow(ctx, n, id, "running")
		if ferr != nil || st.phase == "gone" {
			return fmt.Errorf("start activation: %w", err)
		}
	}
	return nil
}

// follow waits until job id reaches state until or ends. When the host
// goes silent (no heartbeat for a connect timeout) or the connection
// drops, it reconnects and follows again, until it has heard nothing from
// the host for j.reconnect.
func (j *jobs) follow(ctx context.Context, n, id, until string) (jobState, error) {
	beat := max(j.connect/3, time.Second)
	cmd := program(followProgram, false, "", "", id, until, secs(beat))
	heard := time.Now()
	for announced := false; ; {
		hb := &heartbeat{last: time.Now()}
		actx, cancel := context.WithCancel(ctx)
		stop := hb.watch(j.connect, cancel)
		var stderr bytes.Buffer
		code, err := j.remote.Run(actx, n, cmd, nil, hb, &stderr)
		stop()
		cancel()
		heard = later(heard, hb.lastHeard())
		switch {
		case err == nil && code == 0:
			return parseJobState(hb.String()), nil
		case err == nil:
			return jobState{}, fmt.Errorf("follow activation: exit %d: %s", code, lastLines(stderr.String(), 3))
		case ctx.Err() != nil:
			return jobState{}, fmt.Errorf("stopped waiting: %w", ctx.Err())
		}
		if hb.silent() {
			err = fmt.Errorf("no word from the host for %s", j.connect)
		}
		if time.Since(heard) > j.reconnect {
			return jobState{}, fmt.Errorf("%w for %s: %v", errLostContact, time.Since(heard).Round(time.Second), err)
		}
		if !announced {
			j.event(n, StepActivate, EventInfo, "connection lost ("+err.Error()+"); reconnecting to follow the activation")
			announced = true
		}
		if err := pause(ctx, time.Second); err != nil {
			return jobState{}, fmt.Errorf("stopped waiting: %w", err)
		}
	}
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// heartbeat collects a follow's output and notes when it last heard from
// the host; watch cancels the follow when the host stays silent too long.
type heartbeat struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	last    time.Time
	gotByte bool
	quiet   bool
}

func (h *heartbeat) Write(p []byte) (int, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.last, h.gotByte = time.Now(), true
	return h.buf.Write(p)
}

func (h *heartbeat) String() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.buf.String()
}

// lastHeard is when the host last said something (zero if never).
func (h *heartbeat) lastHeard() time.Time {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.gotByte {
		return time.Time{}
	}
	return h.last
}

func (h *heartbeat) silent() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.quiet
}

// watch calls cancel once nothing was written for limit; stop ends it.
func (h *heartbeat) watch(limit time.Duration, cancel func()) (stop func()) {
	done := make(chan struct{})
	go func() {
		t := time.NewTicker(limit / 4)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
			}
			h.mu.Lock()
			quiet := time.Since(h.last) > limit
			h.quiet = h.quiet || quiet
			h.mu.Unlock()
			if quiet {
				cancel()
				return
			}
		}
	}()
	return func() { close(done) }
}

// confirm tells the job the host is still reachable: over a new SSH
// connection, so a system that broke sshd or the network cannot be
// confirmed through a connection made before it was activated. It tries
// until the confirmation window has passed.
func (j *jobs) confirm(ctx context.Context, n, user, sudo, id string, window time.Duration) error {
	deadline := time.Now().Add(window)
	cmd := program(confirmProgram, true, user, sudo, id)
	var last error // the last new connection that failed
	for {
		actx, cancel := context.WithTimeout(ctx, 2*j.connect)
		out := &lockedBuffer{}
		code, err := j.remote.RunFresh(actx, n, cmd, out, out)
		cancel()
		switch {
		case err == nil && code == 0:
			j.event(n, StepConfirm, EventOK, "confirmed over a new connection")
			return nil
		case err == nil && last != nil:
			return last // too late, because no connection got through
		case err == nil:
			return fmt.Errorf("%s", lastLines(out.String(), 2))
		case ctx.Err() != nil:
			return ctx.Err()
		case time.Now().After(deadline):
			return err
		}
		if last == nil {
			j.event(n, StepConfirm, EventInfo, "a new connection failed ("+err.Error()+"); trying until the confirmation window closes")
		}
		last = err
		if err := pause(ctx, time.Second); err != nil {
			return err
		}
	}
}

func pause(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
