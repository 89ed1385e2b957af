package deploy

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
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
	// gzip: the host has gzip (HostState.Gzip), send the script gzipped.
	gzip bool
	// checks: post-activation checks follow, so a successful activation
	// is recorded "activated" until they pass (markChecked).
	checks bool
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
	// local: the host is this machine (apply-local), where a new
	// connection is a new process.
	local bool
}

// confirmedHow says how a confirmation reached the host.
func (j *jobs) confirmedHow() string {
	if j.local {
		return "confirmed from a new process"
	}
	return "confirmed over a new connection"
}

// errLostContact means nix-hive could not reach a host for longer than
// the reconnect window while a job ran there; the job goes on.
var errLostContact = errors.New("lost contact")

// run starts spec on host n (as user, with sudo for non-root) and returns
// the job's end state. An error means the outcome is not known: contact
// was lost, or ctx ended (the second Ctrl-C); the job's id is in it.
// Three SSH sessions carry a confirmed activation: the query before it,
// the start (which goes on to wait for the activation), and the
// confirmation over a new connection (which waits for the end).
func (j *jobs) run(ctx context.Context, n, user string, esc escalation, spec jobSpec) (jobState, error) {
	id := newJobID()
	until := ""
	if spec.confirm > 0 {
		until = "activated"
	}
	st, err := j.start(ctx, n, user, esc, id, until, spec)
	st.id = id
	if err != nil || st.phase != "activated" {
		return j.settled(n, id, st, err)
	}
	st, err = j.confirm(ctx, n, user, esc, id, spec.confirm)
	st.id = id
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

// start sends the job to the host, starts it and waits there until it
// reaches until or ends. When the connection is lost on the way it is
// unclear whether the job runs; following it tells.
func (j *jobs) start(ctx context.Context, n, user string, esc escalation, id, until string, spec jobSpec) (jobState, error) {
	enc := "plain"
	// The agent starts its own job script: nothing is sent.
	agent := esc.viaAgent(user)
	if spec.gzip && !agent {
		enc = "gzip"
	}
	checks := "0"
	if spec.checks {
		checks = "1"
	}
	cmd := program(startProgram, true, user, esc, id, until, secs(j.beat()), enc, string(spec.goal), spec.target, secs(spec.confirm), secs(j.limit), checks)
	began := time.Now()
	var payload io.Reader = strings.NewReader(jobPayload(spec.gzip))
	if agent {
		payload = nil
	}
	out, heard, err := j.watched(ctx, n, cmd, payload, j.remote.Run)
	if st, final, ferr := sorted(ctx, "start activation", out, err); final {
		return st, ferr
	}
	j.lost(n, err)
	st, ferr := j.followFrom(ctx, n, id, until, later(began, heard), true)
	if ferr == nil && st.phase == "gone" {
		return st, fmt.Errorf("start activation: %w", err)
	}
	return st, ferr
}

// sorted says what a waiting program's result means: the job's state, or
// a failure of the program (what) or of ctx; all final. A lost connection
// is not final: the job goes on, and can be followed again.
func sorted(ctx context.Context, what, out string, err error) (st jobState, final bool, ferr error) {
	var ee *exitError
	switch {
	case err == nil:
		return parseJobState(out), true, nil
	case errors.As(err, &ee):
		return jobState{}, true, fmt.Errorf("%s: %w", what, err)
	case ctx.Err() != nil:
		return jobState{}, true, fmt.Errorf("stopped waiting: %w", ctx.Err())
	}
	return jobState{}, false, nil
}

// lost says the connection to n was lost while a job ran there.
func (j *jobs) lost(n string, err error) {
	j.event(n, StepActivate, EventInfo, "connection lost ("+err.Error()+"); reconnecting to follow the activation")
}

func (j *jobs) beat() time.Duration { return max(j.connect/3, time.Second) }

// watched runs cmd with run (Run or a RunFresh adapter), cancelling it
// when the host says nothing on stdout for a connect timeout. It returns
// stdout, and err for a transport failure (silence included) or, with a
// non-zero exit, what the command said on stderr.
func (j *jobs) watched(ctx context.Context, n, cmd string, stdin io.Reader, run runFunc) (out string, heard time.Time, err error) {
	hb := &heartbeat{last: time.Now()}
	stderr := &lockedBuffer{}
	actx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := hb.watch(j.connect, cancel)
	code, err := run(actx, n, cmd, stdin, hb, stderr)
	stop()
	switch {
	case err != nil && hb.silent() && ctx.Err() == nil:
		err = fmt.Errorf("no word from the host for %s", j.connect)
	case err == nil && code != 0:
		err = &exitError{code: code, stderr: lastLines(stderr.String(), 3)}
	}
	return hb.String(), hb.lastHeard(), err
}

// exitError is a host program that ran and failed.
type exitError struct {
	code   int
	stderr string
}

func (e *exitError) Error() string { return fmt.Sprintf("exit %d: %s", e.code, e.stderr) }

type runFunc func(ctx context.Context, name, cmd string, stdin io.Reader, stdout, stderr io.Writer) (int, error)

// fresh adapts RunFresh to runFunc.
func (j *jobs) fresh(ctx context.Context, name, cmd string, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	return j.remote.RunFresh(ctx, name, cmd, stdin, stdout, stderr)
}

// follow waits until job id reaches state until or ends. When the host
// goes silent (no heartbeat for a connect timeout) or the connection
// drops, it reconnects and follows again, until it has heard nothing from
// the host for j.reconnect.
func (j *jobs) follow(ctx context.Context, n, id, until string) (jobState, error) {
	return j.followFrom(ctx, n, id, until, time.Now(), false)
}

// followFrom is follow when the host was last heard from at heard, and
// the loss of contact was already announced or not.
func (j *jobs) followFrom(ctx context.Context, n, id, until string, heard time.Time, announced bool) (jobState, error) {
	cmd := program(followProgram, false, "", escalation{}, id, until, secs(j.beat()))
	for {
		out, at, err := j.watched(ctx, n, cmd, nil, j.remote.Run)
		heard = later(heard, at)
		if st, final, ferr := sorted(ctx, "follow activation", out, err); final {
			return st, ferr
		}
		if time.Since(heard) > j.reconnect {
			return jobState{}, fmt.Errorf("%w for %s: %v", errLostContact, time.Since(heard).Round(time.Second), err)
		}
		if !announced {
			j.lost(n, err)
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

// confirm tells the job the host is still reachable, over a new SSH
// connection, so a system that broke sshd or the network cannot be
// confirmed through a connection made before it was activated; the same
// session then waits for the job to end. It tries until the confirmation
// window has passed; then (or when the session is lost after confirming)
// it follows the job over the pool to learn how it ended.
func (j *jobs) confirm(ctx context.Context, n, user string, esc escalation, id string, window time.Duration) (jobState, error) {
	deadline := time.Now().Add(window)
	cmd := program(confirmProgram, true, user, esc, id, secs(j.beat()))
	var last error // why the last new connection failed
	for {
		out, _, err := j.watched(ctx, n, cmd, nil, j.fresh)
		verdict, rest, _ := strings.Cut(out, "\n")
		var ee *exitError
		switch {
		case err == nil && verdict == "confirmed":
			j.event(n, StepConfirm, EventOK, j.confirmedHow())
			return parseJobState(rest), nil
		case err == nil:
			st := parseJobState(rest) // too late: the job returned, or returns, to what ran before
			if last != nil && st.status == "rolled-back" {
				st.reason += "; last attempt: " + last.Error()
			}
			return st, nil
		case errors.As(err, &ee):
			return jobState{}, fmt.Errorf("confirm activation: %w", err)
		case ctx.Err() != nil:
			return jobState{}, fmt.Errorf("stopped waiting: %w", ctx.Err())
		case verdict == "confirmed":
			// Confirmed, and then the session was lost: follow the rest.
			j.event(n, StepConfirm, EventOK, j.confirmedHow())
			j.lost(n, err)
			return j.followFrom(ctx, n, id, "", time.Now(), true)
		}
		if last == nil {
			j.event(n, StepConfirm, EventInfo, "a new connection failed ("+err.Error()+"); trying until the confirmation window closes")
		}
		last = err
		if time.Now().After(deadline) {
			st, ferr := j.follow(ctx, n, id, "")
			if ferr == nil && st.status == "rolled-back" {
				st.reason += "; last attempt: " + last.Error()
			}
			return st, ferr
		}
		if err := pause(ctx, time.Second); err != nil {
			return jobState{}, fmt.Errorf("stopped waiting: %w", err)
		}
	}
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

// mark records on host n how the post-activation checks of job id ended
// (ok or failed): until then the host's records say the activation's
// checks have not finished, so a deploy stopped during them runs them
// again rather than counting the host as up to date.
func (j *jobs) mark(ctx context.Context, n, user string, esc escalation, id, status string) error {
	var stderr bytes.Buffer
	code, err := j.remote.Run(ctx, n, program(markProgram, true, user, esc, id, status), nil, io.Discard, &stderr)
	if err == nil && code != 0 {
		err = fmt.Errorf("exit %d: %s", code, lastLines(stderr.String(), 3))
	}
	if err != nil {
		return fmt.Errorf("record the checks of activation job %s as %s on %s: %w", id, status, n, err)
	}
	return nil
}
