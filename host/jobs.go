package host

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/nix-hive/nix-hive/eval"
)

// Jobs runs activation jobs on hosts: it starts them detached, follows
// them across dropped connections and confirms them.
type Jobs struct {
	remote Remote
	priv   *Privilege
	// limit bounds one switch-to-configuration on the host.
	limit time.Duration
	// reconnect is how long contact with a host may be lost before the
	// job's outcome is declared unknown.
	reconnect time.Duration
	// connect bounds one attempt to confirm over a new connection.
	connect time.Duration
	notify  func(n string, what Notice, msg string)
	// local: the host is this machine (apply-local), where a new
	// connection is a new process.
	local bool
}

// Timing bounds the jobs of a run.
type Timing struct {
	Activation time.Duration // one switch-to-configuration on the host
	Confirm    time.Duration // the confirmation window of magic rollback
	Connect    time.Duration // one connection; silence on one
}

// Notice is what Jobs tells about a job it waits for.
type Notice int

const (
	// ContactLost: the connection to the host was lost while its job
	// ran; Jobs reconnects to follow the job.
	ContactLost Notice = iota
	// Confirmed: the activation was confirmed over a new connection (or
	// from a new process, on this machine).
	Confirmed
	// ConfirmRetry: a new connection to confirm failed; Jobs tries again
	// until the confirmation window closes.
	ConfirmRetry
)

// NewJobs runs jobs over remote, becoming root with priv. Contact with a
// host whose job runs may be lost for the confirmation window and a
// connect timeout (t.Confirm + t.Connect) before the job's outcome is
// declared unknown: longer than that, the job (if the host is alive) has
// rolled back or still runs switch-to-configuration. local says the host
// is this machine (apply-local), where a new connection is a new process.
// notify (nil: nobody) hears what happens while a job is waited for.
func NewJobs(remote Remote, priv *Privilege, t Timing, local bool, notify func(n string, what Notice, msg string)) *Jobs {
	return &Jobs{remote: remote, priv: priv, limit: t.Activation, connect: t.Connect,
		reconnect: t.Confirm + t.Connect, local: local, notify: notify}
}

// tell notifies what happened on host n, if anyone listens.
func (j *Jobs) tell(n string, what Notice, msg string) {
	if j.notify != nil {
		j.notify(n, what, msg)
	}
}

// confirmedHow says how a confirmation reached the host.
func (j *Jobs) confirmedHow() string {
	if j.local {
		return "confirmed from a new process"
	}
	return "confirmed over a new connection"
}

// errLostContact means nix-hive could not reach a host for longer than
// the reconnect window while a job ran there; the job goes on.
var errLostContact = errors.New("lost contact")

// Run starts job on host in (as root, through the privilege command for
// a non-root login) and returns the job's end state. An error means the
// outcome is not known: contact was lost, or ctx ended (the second
// Ctrl-C); the job's id is in it. Two steps carry a confirmed
// activation: the start, which goes on to wait for the activation (in
// the deploy lock's session where the host's lock holds one, see
// opSession), and the confirmation over a new connection, which waits
// for the end.
func (j *Jobs) Run(ctx context.Context, in *eval.Instance, job Job) (JobState, error) {
	n, user, esc := in.Name, in.User, j.priv.forHost(in.Name)
	id := newID()
	until := ""
	if job.Confirm > 0 {
		until = "activated"
	}
	st, err := j.start(ctx, n, user, esc, id, until, job)
	st.ID = id
	if err != nil || st.Phase != "activated" {
		return j.settled(n, id, st, err)
	}
	st, err = j.confirm(ctx, n, user, esc, id, job.Confirm)
	st.ID = id
	return j.settled(n, id, st, err)
}

func (j *Jobs) settled(n, id string, st JobState, err error) (JobState, error) {
	switch {
	case err != nil:
		return st, &JobError{id: id, host: n, err: err}
	case st.Phase == "lost":
		return st, &JobError{id: id, host: n, err: fmt.Errorf("the job ended without an outcome: %s", st)}
	}
	return st, nil
}

// start sends the job to the host, starts it and waits there until it
// reaches until or ends. When the connection is lost on the way it is
// unclear whether the job runs; following it tells.
func (j *Jobs) start(ctx context.Context, n, user string, esc escalation, id, until string, job Job) (JobState, error) {
	enc := "plain"
	// The agent starts its own job script: nothing is sent.
	agent := esc.viaAgent(user)
	if job.Gzip && !agent {
		enc = "gzip"
	}
	checks := "0"
	if job.Checks {
		checks = "1"
	}
	args := []string{id, until, secs(j.beat()), enc, string(job.Goal), job.Target, secs(job.Confirm), secs(j.limit), checks}
	if job.Specialisation != "" || len(job.Profiles) > 0 {
		args = append(args, job.Specialisation)
	}
	for _, p := range job.Profiles {
		args = append(args, word(p))
	}
	cmd := program(startProgram, true, user, esc, args...)
	began := time.Now()
	var payload io.Reader = strings.NewReader(jobPayload(job.Gzip))
	if agent {
		payload = nil
	}
	out, heard, err := j.watched(ctx, n, cmd, payload, j.priv.through(j.remote, agentArgv(startProgram, user, esc, args...)))
	if st, final, ferr := sorted(ctx, "start activation", out, err); final {
		return st, ferr
	}
	j.lost(n, err)
	st, ferr := j.followFrom(ctx, n, id, until, later(began, heard), true)
	if ferr == nil && st.Phase == "gone" {
		return st, fmt.Errorf("start activation: %w", err)
	}
	return st, ferr
}

// sorted says what a waiting program's result means: the job's state, or
// a failure of the program (what) or of ctx; all final. A lost connection
// is not final: the job goes on, and can be followed again.
func sorted(ctx context.Context, what, out string, err error) (st JobState, final bool, ferr error) {
	var ee *exitError
	switch {
	case err == nil:
		return parseJobState(out), true, nil
	case errors.As(err, &ee):
		return JobState{}, true, fmt.Errorf("%s: %w", what, err)
	case ctx.Err() != nil:
		return JobState{}, true, fmt.Errorf("stopped waiting: %w", ctx.Err())
	}
	return JobState{}, false, nil
}

// lost says the connection to n was lost while a job ran there.
func (j *Jobs) lost(n string, err error) {
	j.tell(n, ContactLost, "connection lost ("+err.Error()+"); reconnecting to follow the activation")
}

func (j *Jobs) beat() time.Duration { return max(j.connect/3, time.Second) }

// watched runs cmd with run (Run or a RunFresh adapter), cancelling it
// when the host says nothing on stdout for a connect timeout. It returns
// stdout, and err for a transport failure (silence included) or, with a
// non-zero exit, what the command said on stderr.
func (j *Jobs) watched(ctx context.Context, n, cmd string, stdin io.Reader, run runFunc) (out string, heard time.Time, err error) {
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
func (j *Jobs) fresh(ctx context.Context, name, cmd string, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	return j.remote.RunFresh(ctx, name, cmd, stdin, stdout, stderr)
}

// Follow waits until job id on host n ends. When the host
// goes silent (no heartbeat for a connect timeout) or the connection
// drops, it reconnects and follows again, until it has heard nothing from
// the host for j.reconnect.
func (j *Jobs) Follow(ctx context.Context, n, id string) (JobState, error) {
	return j.followFrom(ctx, n, id, "", time.Now(), false)
}

// followFrom is Follow, until state until ("" for the end), when the host was last heard from at heard, and
// the loss of contact was already announced or not.
func (j *Jobs) followFrom(ctx context.Context, n, id, until string, heard time.Time, announced bool) (JobState, error) {
	cmd := asLogin(followProgram, id, until, secs(j.beat()))
	for {
		out, at, err := j.watched(ctx, n, cmd, nil, j.remote.Run)
		heard = later(heard, at)
		if st, final, ferr := sorted(ctx, "follow activation", out, err); final {
			return st, ferr
		}
		if time.Since(heard) > j.reconnect {
			return JobState{}, fmt.Errorf("%w for %s: %v", errLostContact, time.Since(heard).Round(time.Second), err)
		}
		if !announced {
			j.lost(n, err)
			announced = true
		}
		if err := pause(ctx, time.Second); err != nil {
			return JobState{}, fmt.Errorf("stopped waiting: %w", err)
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
func (j *Jobs) confirm(ctx context.Context, n, user string, esc escalation, id string, window time.Duration) (JobState, error) {
	deadline := time.Now().Add(window)
	cmd := program(confirmProgram, true, user, esc, id, secs(j.beat()))
	var last error // why the last new connection failed
	for {
		out, _, err := j.watched(ctx, n, cmd, nil, j.fresh)
		verdict, rest, _ := strings.Cut(out, "\n")
		var ee *exitError
		switch {
		case err == nil && verdict == "confirmed":
			j.tell(n, Confirmed, j.confirmedHow())
			return parseJobState(rest), nil
		case err == nil:
			st := parseJobState(rest) // too late: the job returned, or returns, to what ran before
			if last != nil && st.RolledBack() {
				st.Reason += "; last attempt: " + last.Error()
			}
			return st, nil
		case errors.As(err, &ee):
			return JobState{}, fmt.Errorf("confirm activation: %w", err)
		case ctx.Err() != nil:
			return JobState{}, fmt.Errorf("stopped waiting: %w", ctx.Err())
		case verdict == "confirmed":
			// Confirmed, and then the session was lost: follow the rest.
			j.tell(n, Confirmed, j.confirmedHow())
			j.lost(n, err)
			return j.followFrom(ctx, n, id, "", time.Now(), true)
		}
		if last == nil {
			j.tell(n, ConfirmRetry, "a new connection failed ("+err.Error()+"); trying until the confirmation window closes")
		}
		last = err
		if time.Now().After(deadline) {
			st, ferr := j.Follow(ctx, n, id)
			if ferr == nil && st.RolledBack() {
				st.Reason += "; last attempt: " + last.Error()
			}
			return st, ferr
		}
		if err := pause(ctx, time.Second); err != nil {
			return JobState{}, fmt.Errorf("stopped waiting: %w", err)
		}
	}
}

// Mark records on host in how the post-activation checks of job id ended
// (status ok or failed): until then the host's records say the activation's
// checks have not finished, so a deploy stopped during them runs them
// again rather than counting the host as up to date.
func (j *Jobs) Mark(ctx context.Context, in *eval.Instance, id, status string) error {
	n := in.Name
	var stderr lockedBuffer
	esc := j.priv.forHost(n)
	run := j.priv.through(j.remote, agentArgv(markProgram, in.User, esc, id, status))
	code, err := run(ctx, n, program(markProgram, true, in.User, esc, id, status), nil, io.Discard, &stderr)
	if err == nil && code != 0 {
		err = fmt.Errorf("exit %d: %s", code, lastLines(stderr.String(), 3))
	}
	if err != nil {
		return fmt.Errorf("record the checks of activation job %s as %s on %s: %w", id, status, n, err)
	}
	return nil
}
