package starlark

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	sk "go.starlark.net/starlark"
)

// cancelGrace is how long a call that hit its limit or lost its context
// waits for the interpreter to unwind. Every builtin honours ctx, so this
// only matters when an injected Runner or http.Client does not; the call
// then returns anyway and its goroutine ends when the dependency returns.
const cancelGrace = 2 * time.Second

const callKey = "nix-hive/call"

var errAbandoned = errors.New("a builtin ignored the cancellation and was abandoned")

// call is the state of one policy call, shared by the builtins through a
// thread local.
type call struct {
	policy   *Policy
	ctx      context.Context // ends at the call's time limit
	parent   context.Context // the caller's context
	fn       string          // "select", "waves", "pre_activate", "post_activate", "" while loading
	instance *instanceValue  // the instance a check runs for; nil otherwise
	limit    time.Duration

	stepLimited atomic.Bool

	// canaries collects the names canaries() returned, so Waves can mark
	// the waves made of them. Only the interpreter goroutine touches it.
	canaries map[string]bool

	mu   sync.Mutex
	logs []string
}

func callOf(thread *sk.Thread) *call { return thread.Local(callKey).(*call) }

// maxLogs bounds CheckResult.Logs; Env.Log still gets every line.
const maxLogs = 1000

func (c *call) log(msg string) {
	c.mu.Lock()
	switch n := len(c.logs); {
	case n < maxLogs:
		c.logs = append(c.logs, msg)
	case n == maxLogs:
		c.logs = append(c.logs, "(more lines went to the log only)")
	}
	c.mu.Unlock()
	if c.policy.env.Log != nil {
		name := ""
		if c.instance != nil {
			name = c.instance.inst.Name
		}
		c.policy.env.Log(name, msg)
	}
}

func (c *call) logsCopy() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.logs...)
}

// stopped returns why the call was stopped from outside the policy (time
// limit, step limit, caller's context), or nil while it may run on.
func (c *call) stopped() error {
	if c.stepLimited.Load() {
		return ErrStepLimit
	}
	if c.ctx.Err() == nil {
		return nil
	}
	if c.parent.Err() != nil {
		return context.Cause(c.parent)
	}
	return context.Cause(c.ctx)
}

func (c *call) stopMessage(cause error) string {
	switch {
	case errors.Is(cause, ErrStepLimit):
		return fmt.Sprintf("policy exceeded %d execution steps (the limit; an endless loop?)", c.policy.maxSteps())
	case errors.Is(cause, ErrTimeLimit):
		return fmt.Sprintf("policy exceeded %s (the time limit) and was stopped", c.limit)
	}
	return fmt.Sprintf("cancelled: %v", cause)
}

// newCall prepares a call of the policy function fn with time limit limit.
func (p *Policy) newCall(ctx context.Context, fn string, limit time.Duration) (*call, context.CancelFunc) {
	cctx, cancel := context.WithTimeoutCause(ctx, limit, ErrTimeLimit)
	return &call{policy: p, ctx: cctx, parent: ctx, fn: fn, limit: limit}, cancel
}

// exec runs do on a fresh thread in its own goroutine and returns when it
// is done or, once the call's context ends, when the interpreter has
// unwound (at most cancelGrace later). The result channel has room for one
// value so an abandoned goroutine can always finish.
func (p *Policy) exec(c *call, do func(*sk.Thread) (sk.Value, error)) (sk.Value, error) {
	if err := c.ctx.Err(); err != nil {
		return nil, err // over before it began; evalError reports why
	}
	thread := &sk.Thread{
		Name:  "policy " + c.fn,
		Print: func(_ *sk.Thread, msg string) { c.log(msg) },
		Load: func(_ *sk.Thread, module string) (sk.StringDict, error) {
			return nil, fmt.Errorf("load(%q): a policy is a single file, load is not available", module)
		},
		OnMaxSteps: func(t *sk.Thread) {
			c.stepLimited.Store(true)
			t.Cancel("step limit")
		},
	}
	thread.SetMaxExecutionSteps(p.maxSteps())
	thread.SetLocal(callKey, c)

	type result struct {
		v   sk.Value
		err error
	}
	done := make(chan result, 1)
	go func() {
		v, err := do(thread)
		done <- result{v, err}
	}()

	select {
	case r := <-done:
		return r.v, r.err
	case <-c.ctx.Done():
	}
	thread.Cancel("time limit or cancellation")
	grace := time.NewTimer(cancelGrace)
	defer grace.Stop()
	select {
	case r := <-done:
		return r.v, r.err
	case <-grace.C:
		return nil, errAbandoned
	}
}

// evalError turns an error from the interpreter into an *Error positioned
// at the innermost frame in the policy file.
func (c *call) evalError(err error) *Error {
	e := &Error{File: c.policy.File, Func: c.fn, Msg: err.Error()}
	var ee *sk.EvalError
	if errors.As(err, &ee) {
		e.setPos(innermost(ee.CallStack, c.policy.entries))
		e.Msg = ee.Msg
		e.Backtrace = ee.Backtrace()
	}
	var f *failure
	if errors.As(err, &f) {
		e.Fail = true
		e.Msg = f.msg
	}
	if cause := c.stopped(); cause != nil {
		e.Fail = false
		e.Err = cause
		e.Msg = c.stopMessage(cause)
		if errors.Is(err, errAbandoned) {
			e.Msg += "; " + errAbandoned.Error()
		}
	}
	return e
}
