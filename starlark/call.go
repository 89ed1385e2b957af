package starlark

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	sk "go.starlark.net/starlark"
	"go.starlark.net/syntax"
)

const callKey = "nix-hive/call"

// maxText bounds every message the evaluator sends nix-hive (a log line,
// fail()'s message, an error, a backtrace): a policy must not be able to
// move its memory into the deploy host's process.
const maxText = 16 << 10

// maxCommand bounds the command ctx.run sends, a script included.
const maxCommand = 1 << 20

// call is the state of one policy call inside the evaluator, shared by
// the builtins through a thread local. Its thread runs on the call's own
// goroutine; stop may be called from any goroutine.
type call struct {
	srv      *server
	id       uint64
	fn       string                   // "select", "waves", "pre_activate", "post_activate", "" while loading
	entries  map[syntax.Position]bool // where the file's functions start; nil while loading
	instance *instanceValue           // the instance a check runs for; nil otherwise
	quiet    bool                     // drop log() and print(): a reload after Load showed them
	thread   *sk.Thread

	once   sync.Once
	why    atomic.Uint32 // a stopKind, stored before halted is closed
	halted chan struct{}

	// canaries collects the names canaries() returned, so waves can mark
	// the waves made of them. Only the thread's goroutine touches it.
	canaries map[string]bool

	mu      sync.Mutex
	seq     uint64
	waiting map[uint64]chan *reply // requests sent to nix-hive, by Seq
}

func callOf(thread *sk.Thread) *call { return thread.Local(callKey).(*call) }

func newCall(srv *server, f frame) *call {
	c := &call{srv: srv, id: f.ID, fn: f.Fn, quiet: f.Quiet, halted: make(chan struct{}), waiting: map[uint64]chan *reply{}}
	c.thread = &sk.Thread{
		Name:  "policy " + f.Fn,
		Print: func(_ *sk.Thread, msg string) { c.log(msg) },
		Load: func(_ *sk.Thread, module string) (sk.StringDict, error) {
			return nil, fmt.Errorf("load(%q): a policy is a single file, load is not available", module)
		},
		OnMaxSteps: func(*sk.Thread) { c.stop(stopSteps) },
	}
	c.thread.SetMaxExecutionSteps(f.MaxSteps)
	c.thread.SetLocal(callKey, c)
	return c
}

// stop ends the call from outside the policy: builtins waiting for nix-hive
// return at once and the interpreter stops at its next step. The first
// reason stays.
func (c *call) stop(why stopKind) {
	c.once.Do(func() {
		c.why.Store(uint32(why))
		close(c.halted)
		c.thread.Cancel(why.String())
	})
}

func (c *call) stopKind() stopKind {
	select {
	case <-c.halted:
		return stopKind(c.why.Load())
	default:
		return stopNone
	}
}

var stopErrors = [...]error{stopTime: ErrTimeLimit, stopCancel: context.Canceled, stopSteps: ErrStepLimit, stopMemory: ErrMemoryLimit}

// stopped returns why the call was stopped from outside the policy, or nil
// while it may run on. nix-hive has the last word on the reason (it
// knows its caller's context); this one only ends retries and waits.
func (c *call) stopped() error {
	if k := c.stopKind(); k != stopNone {
		return stopErrors[k]
	}
	return nil
}

func (c *call) log(msg string) {
	if !c.quiet {
		c.srv.send(frame{Op: opLog, ID: c.id, Msg: clip(msg)})
	}
}

// ask sends req to nix-hive and waits for its reply, or until the call is
// stopped.
func (c *call) ask(req request) (*reply, error) {
	ch := make(chan *reply, 1)
	c.mu.Lock()
	c.seq++
	seq := c.seq
	c.waiting[seq] = ch
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.waiting, seq)
		c.mu.Unlock()
	}()
	c.srv.send(frame{Op: opRequest, ID: c.id, Seq: seq, Req: &req})
	select {
	case r := <-ch:
		return r, nil
	case <-c.halted:
		return nil, c.stopped()
	}
}

func (c *call) deliver(seq uint64, r *reply) {
	c.mu.Lock()
	ch := c.waiting[seq]
	c.mu.Unlock()
	if ch != nil {
		ch <- r // room for one; a request has one reply
	}
}

// sleep waits d through nix-hive's Env.Sleep.
func (c *call) sleep(d time.Duration) error {
	r, err := c.ask(request{Op: "sleep", Timeout: d})
	if err != nil {
		return err
	}
	if r.Err != "" {
		return errors.New(r.Err)
	}
	return nil
}

// evalError turns an error from the interpreter into the call's outcome,
// an *Error positioned at the innermost frame in the policy file.
func (c *call) evalError(err error) *outcome {
	e := &Error{File: c.srv.file, Func: c.fn, Msg: err.Error()}
	var ee *sk.EvalError
	if errors.As(err, &ee) {
		e.setPos(innermost(ee.CallStack, c.entries))
		e.Msg = ee.Msg
		e.Backtrace = ee.Backtrace()
	}
	var f *failure
	if errors.As(err, &f) {
		e.Fail = true
		e.Msg = f.msg
	}
	e.Msg, e.Backtrace = clip(e.Msg), clip(e.Backtrace)
	return &outcome{Err: e, Stop: c.stopKind()}
}

// clip shortens s to maxText bytes, saying how much it left out.
func clip(s string) string {
	if len(s) <= maxText {
		return s
	}
	n := maxText
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return fmt.Sprintf("%s... (%d more bytes)", s[:n], len(s)-n)
}
