package starlark

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"time"
)

// Defaults for the zero fields of Env.
const (
	DefaultMaxSteps     = 10_000_000
	DefaultCallTimeout  = 5 * time.Second
	DefaultCheckTimeout = 60 * time.Second
	// DefaultMaxMemory is what a policy may hold: hundreds of times what
	// planning a fleet of thousands of instances needs.
	DefaultMaxMemory = 256 << 20
)

// Runner runs shell commands on instances for ctx.run.
type Runner interface {
	// Run runs cmd, verbatim, with the login shell of the instance named
	// instance and returns its output and exit status. A non-zero exit
	// status is not an error: err is only for failing to run cmd at all
	// (connection lost, session refused). Run must return promptly once
	// ctx ends. It is called concurrently for different instances.
	Run(ctx context.Context, instance, cmd string) (stdout, stderr string, exitCode int, err error)
}

// Env is everything a policy may reach besides its own file. The zero
// value is usable for Load, Select and Waves.
type Env struct {
	Runner Runner       // ctx.run; nil makes ctx.run raise an error
	HTTP   *http.Client // http_get; nil means http.DefaultClient (timeouts come from the call)
	// Sleep waits for sleep() and between retry() attempts; it must return
	// ctx.Err() early when ctx ends. Nil means a real timer.
	Sleep func(ctx context.Context, d time.Duration) error
	// Log receives log() and print() output with the instance a check runs
	// for ("" while loading, in select and in waves). It is called
	// concurrently when checks run in parallel.
	Log func(instance, msg string)

	MaxSteps     uint64        // Starlark steps per call; 0 means DefaultMaxSteps
	CallTimeout  time.Duration // loading the file, select, waves; 0 means DefaultCallTimeout
	CheckTimeout time.Duration // each pre_activate and post_activate; 0 means DefaultCheckTimeout
	// MaxMemory is how many bytes the policy may hold, all its calls
	// running at once together; 0 means DefaultMaxMemory. Passing it
	// stops every call running (see the package documentation).
	MaxMemory uint64
}

// FailureAction is what the executor does with a host whose activation or
// post_activate check failed.
type FailureAction string

const (
	// OnFailureStop leaves the failed host as it is; with the default
	// budget the rollout stops at the first failure.
	OnFailureStop FailureAction = "stop"
	// OnFailureContinue leaves the failed host as it is and, with the
	// default (unlimited) budget, carries on.
	OnFailureContinue FailureAction = "continue"
	// OnFailureRollback rolls the failed host back to its previous
	// generation; with the default budget the rollout stops too.
	OnFailureRollback FailureAction = "rollback"
)

// Unlimited is a FailureBudget limit that never stops a rollout.
const Unlimited = -1

// FailureBudget is how many failed hosts a rollout tolerates, per wave and
// overall, before it stops. It is exceeded when failures > limit.
type FailureBudget struct {
	Wave  int // Unlimited or >= 0
	Total int // Unlimited or >= 0
}

// Wave is a group of instances activated together; waves run one after
// another.
type Wave struct {
	Instances []Instance
	// Canary is set when every instance of the wave was picked by
	// canaries(): any failure in it stops the rollout, whatever the budget.
	Canary bool
}

// Policy is a loaded policy file. Its methods may be called concurrently:
// the file's globals are frozen after loading and every call runs on a
// fresh Starlark thread, in the policy's evaluator process.
type Policy struct {
	File        string
	OnFailure   FailureAction // on_failure; default OnFailureStop
	MaxFailures FailureBudget // max_failures, or the default for OnFailure
	// RollbackSucceeded (rollback_succeeded = True): when a host fails,
	// the rollout stops and every host it changed returns to what it ran
	// before, the latest wave first.
	RollbackSucceeded bool
	// Which optional functions the file defines.
	HasSelect, HasWaves, HasPre, HasPost bool

	env Env
	ev  *evaluator // runs the file's calls; nil for Default
}

// Default is the policy of a hive without hive.star: every target, one
// wave, no checks, stop at the first failure.
func Default(env Env) *Policy {
	return &Policy{File: "(default policy)", OnFailure: OnFailureStop, MaxFailures: FailureBudget{Wave: Unlimited, Total: 0}, env: env}
}

// WithRunner returns the policy with r running its ctx.run commands: a
// policy is loaded before there are connections to run them on.
func (p *Policy) WithRunner(r Runner) *Policy {
	q := *p
	q.env.Runner = r
	return &q
}

// Load parses and runs the policy file, within env.CallTimeout and
// env.MaxMemory, and checks its settings and functions. src is the file's
// content; nil reads file. Errors in the policy are *Error pointing at
// file:line:col.
//
// The file runs in an evaluator process started for the policy (and
// started again, running the file anew without showing its log() output,
// when a later call finds none: it ends after a few idle seconds, and
// when the policy's memory passes the limit).
func Load(ctx context.Context, file string, src []byte, env Env) (*Policy, error) {
	if src == nil {
		var err error
		if src, err = os.ReadFile(file); err != nil {
			return nil, fmt.Errorf("read policy: %w", err)
		}
	}
	p := &Policy{File: file, env: env, ev: &evaluator{file: file, src: src}}
	s, err := p.ev.load(ctx, p)
	if err != nil {
		return nil, err
	}
	p.OnFailure, p.MaxFailures, p.RollbackSucceeded = s.OnFailure, s.MaxFailures, s.RollbackSucceeded
	p.HasSelect, p.HasWaves, p.HasPre, p.HasPost = s.HasSelect, s.HasWaves, s.HasPre, s.HasPost
	return p, nil
}

func (p *Policy) maxSteps() uint64 {
	if p.env.MaxSteps == 0 {
		return DefaultMaxSteps
	}
	return p.env.MaxSteps
}

func (p *Policy) callTimeout() time.Duration {
	if p.env.CallTimeout <= 0 {
		return DefaultCallTimeout
	}
	return p.env.CallTimeout
}

func (p *Policy) checkTimeout() time.Duration {
	if p.env.CheckTimeout <= 0 {
		return DefaultCheckTimeout
	}
	return p.env.CheckTimeout
}

func (p *Policy) maxMemory() uint64 {
	if p.env.MaxMemory == 0 {
		return DefaultMaxMemory
	}
	return p.env.MaxMemory
}

func (p *Policy) sleep(ctx context.Context, d time.Duration) error {
	if p.env.Sleep != nil {
		return p.env.Sleep(ctx, d)
	}
	return realSleep(ctx, d)
}

// Select calls select(instances) and returns the instances it kept, in the
// order it returned them; without select it returns in unchanged. select
// may return instances or names; each must be one of in, at most once.
func (p *Policy) Select(ctx context.Context, in []Instance) ([]Instance, error) {
	if _, _, err := instanceValues(in); err != nil {
		return nil, fmt.Errorf("select: %w", err)
	}
	if !p.HasSelect {
		return append([]Instance(nil), in...), nil
	}
	out, err := p.ev.call(ctx, p.newInvocation("select", p.callTimeout(), ""), frame{Fn: "select", Instances: in})
	if err != nil {
		return nil, err
	}
	sel := make([]Instance, len(out.Selected))
	for i, idx := range out.Selected {
		sel[i] = in[idx]
	}
	return sel, nil
}

// Waves calls waves(instances) and returns the waves in order; without
// waves it returns one wave of all of in (none when in is empty).
//
// waves must return a list (or tuple) of lists (or tuples) of instances or
// names. Every name must be one of in and appear at most once, and every
// instance of in must appear: one left out is an error, since deploying
// it silently in an extra wave could surprise; drop instances in select.
// Empty waves are dropped.
func (p *Policy) Waves(ctx context.Context, in []Instance) ([]Wave, error) {
	if _, _, err := instanceValues(in); err != nil {
		return nil, fmt.Errorf("waves: %w", err)
	}
	if !p.HasWaves {
		if len(in) == 0 {
			return nil, nil
		}
		return []Wave{{Instances: append([]Instance(nil), in...)}}, nil
	}
	out, err := p.ev.call(ctx, p.newInvocation("waves", p.callTimeout(), ""), frame{Fn: "waves", Instances: in})
	if err != nil {
		return nil, err
	}
	waves := make([]Wave, len(out.Waves))
	for w, idx := range out.Waves {
		waves[w].Canary = out.Canary[w]
		for _, i := range idx {
			waves[w].Instances = append(waves[w].Instances, in[i])
		}
	}
	return waves, nil
}

// CheckResult is the outcome of pre_activate or post_activate for one
// instance.
type CheckResult struct {
	OK bool
	// Message says why the check failed: fail()'s message exactly (its
	// first 16 KiB), or the first line of Err
	// ("file:line:col: post_activate(): ...").
	Message string
	// Err is the *Error of a failed check, nil when OK. Err.Fail is set
	// when the policy called fail(); errors.Is(Err, context.Canceled) when
	// the caller's context ended; ErrTimeLimit, ErrStepLimit and
	// ErrMemoryLimit for limits.
	Err      error
	Logs     []string // log() and print() output of this check
	Duration time.Duration
}

// PreActivate runs pre_activate(ctx) for inst within Env.CheckTimeout; it
// passes when the function is undefined. A failed pre-check means the host
// is skipped.
func (p *Policy) PreActivate(ctx context.Context, inst Instance) CheckResult {
	if !p.HasPre {
		return CheckResult{OK: true}
	}
	return p.check(ctx, "pre_activate", inst)
}

// PostActivate runs post_activate(ctx) for inst within Env.CheckTimeout;
// it passes when the function is undefined. A failed post-check marks the
// host failed (and, with on_failure="rollback", to be rolled back).
func (p *Policy) PostActivate(ctx context.Context, inst Instance) CheckResult {
	if !p.HasPost {
		return CheckResult{OK: true}
	}
	return p.check(ctx, "post_activate", inst)
}

// check runs a check function. It fails when the function raises an error
// (fail() included) or returns False; any other return value passes.
func (p *Policy) check(ctx context.Context, name string, inst Instance) CheckResult {
	start := time.Now()
	if _, err := newInstanceValue(&inst, 0); err != nil {
		err = fmt.Errorf("%s: %w", name, err)
		return CheckResult{Message: err.Error(), Err: err}
	}
	inv := p.newInvocation(name, p.checkTimeout(), inst.Name)
	_, err := p.ev.call(ctx, inv, frame{Fn: name, Instances: []Instance{inst}})
	res := CheckResult{OK: true}
	if err != nil {
		res = CheckResult{Message: err.Error(), Err: err}
		if e, ok := err.(*Error); ok {
			res.Message = e.Summary()
			if e.Fail {
				res.Message = e.Msg
			}
		}
	}
	res.Logs = inv.logsCopy()
	res.Duration = time.Since(start)
	return res
}

// ShouldStop reports whether the rollout must start no further hosts,
// given the failures so far in wave w and in the whole rollout. Failures
// are hosts whose activation or post_activate failed; hosts skipped by a
// failed pre_activate are not failures. Call it after each host finishes.
//
// Once a call of the policy has passed its memory limit, ShouldStop says
// stop whatever the budget: the policy is broken, and the checks that ran
// beside it were stopped too.
func (p *Policy) ShouldStop(w Wave, waveFailures, totalFailures int) bool {
	if p.ev != nil && p.ev.overMemory.Load() {
		return true
	}
	if w.Canary && waveFailures > 0 {
		return true
	}
	b := p.MaxFailures
	return (b.Wave != Unlimited && waveFailures > b.Wave) ||
		(b.Total != Unlimited && totalFailures > b.Total)
}
