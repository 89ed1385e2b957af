package starlark

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/nix-hive/nix-hive/internal/spelling"
	sk "go.starlark.net/starlark"
	"go.starlark.net/syntax"
)

// Defaults for the zero fields of Env.
const (
	DefaultMaxSteps     = 10_000_000
	DefaultCallTimeout  = 5 * time.Second
	DefaultCheckTimeout = 60 * time.Second
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
// fresh Starlark thread.
type Policy struct {
	File        string
	OnFailure   FailureAction // on_failure; default OnFailureStop
	MaxFailures FailureBudget // max_failures, or the default for OnFailure
	// Which optional functions the file defines.
	HasSelect, HasWaves, HasPre, HasPost bool

	env                          Env
	entries                      map[syntax.Position]bool // where each def and lambda starts
	selectFn, wavesFn, pre, post *sk.Function
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

// fileOptions allow while loops and top-level if/for so users can write
// polling loops; the step and time limits keep them safe. Recursion stays
// off: it is never needed for a rollout and deep recursion costs stack.
var fileOptions = &syntax.FileOptions{Set: true, While: true, TopLevelControl: true}

// Load parses and runs the policy file, within env.CallTimeout, and checks
// its settings and functions. src is the file's content; nil reads file.
// Errors in the policy are *Error pointing at file:line:col.
func Load(ctx context.Context, file string, src []byte, env Env) (*Policy, error) {
	if src == nil {
		var err error
		if src, err = os.ReadFile(file); err != nil {
			return nil, fmt.Errorf("read policy: %w", err)
		}
	}
	p := &Policy{File: file, env: env}

	// SourceProgramOptions + Init is what ExecFileOptions does; doing it in
	// two steps keeps the syntax tree, which locates the settings.
	f, prog, err := sk.SourceProgramOptions(fileOptions, file, src, predeclared.Has)
	if err != nil {
		return nil, compileError(file, err)
	}
	c, cancel := p.newCall(ctx, "", p.callTimeout())
	defer cancel()
	var globals sk.StringDict
	_, err = p.exec(c, func(thread *sk.Thread) (sk.Value, error) {
		var err error
		globals, err = prog.Init(thread, predeclared)
		return sk.None, err
	})
	if err != nil {
		return nil, c.evalError(err)
	}
	globals.Freeze()
	p.entries = functionStarts(f)
	if err := p.configure(globals, assignments(f)); err != nil {
		return nil, err
	}
	return p, nil
}

// assignments maps each top-level name to where it is first assigned.
func assignments(f *syntax.File) map[string]syntax.Position {
	pos := map[string]syntax.Position{}
	syntax.Walk(f, func(n syntax.Node) bool {
		switch n := n.(type) {
		case *syntax.DefStmt:
			if _, ok := pos[n.Name.Name]; !ok {
				pos[n.Name.Name] = n.Name.NamePos
			}
			return false // names assigned inside are locals
		case *syntax.LambdaExpr:
			return false
		case *syntax.Ident:
			// Top-level code cannot read a global before assigning it, so
			// the first occurrence outside function bodies is the binding.
			if _, ok := pos[n.Name]; !ok {
				pos[n.Name] = n.NamePos
			}
		}
		return true
	})
	return pos
}

// functionStarts is the set of positions of def statements and lambdas,
// which is where a frame stands before its function's body runs.
func functionStarts(f *syntax.File) map[syntax.Position]bool {
	starts := map[syntax.Position]bool{}
	syntax.Walk(f, func(n syntax.Node) bool {
		switch n := n.(type) {
		case *syntax.DefStmt:
			starts[n.Def] = true
		case *syntax.LambdaExpr:
			starts[n.Lambda] = true
		}
		return true
	})
	return starts
}

// settingNames are the long names a typo is likely in; a global within two
// edits of one, while the real one is undefined, is reported rather than
// silently ignored.
var settingNames = []string{"pre_activate", "post_activate", "max_failures", "on_failure"}

// configure reads the settings and functions out of the frozen globals.
func (p *Policy) configure(globals sk.StringDict, pos map[string]syntax.Position) error {
	errAt := func(name, format string, args ...any) *Error {
		e := &Error{File: p.File, Msg: fmt.Sprintf(format, args...)}
		e.setPos(pos[name])
		return e
	}
	for _, name := range globals.Keys() {
		for _, known := range settingNames {
			if name != known && !globals.Has(known) && spelling.Distance(name, known) <= 2 {
				return errAt(name, "%s is not a policy setting; did you mean %s?", name, known)
			}
		}
	}
	if err := p.functions(globals, errAt); err != nil {
		return err
	}
	return p.settings(globals, errAt)
}

type errAtFunc func(name, format string, args ...any) *Error

// functions picks select, waves, pre_activate and post_activate out of
// the globals.
func (p *Policy) functions(globals sk.StringDict, errAt errAtFunc) error {
	fns := []struct {
		name string
		dst  **sk.Function
		has  *bool
	}{
		{"select", &p.selectFn, &p.HasSelect},
		{"waves", &p.wavesFn, &p.HasWaves},
		{"pre_activate", &p.pre, &p.HasPre},
		{"post_activate", &p.post, &p.HasPost},
	}
	for _, f := range fns {
		v, ok := globals[f.name]
		if !ok {
			continue
		}
		fn, ok := v.(*sk.Function)
		if !ok {
			return errAt(f.name, "%s must be a function defined with def, got %s", f.name, v.Type())
		}
		if !takesOneArg(fn) {
			return errAt(f.name, "%s must take exactly one argument", f.name)
		}
		*f.dst, *f.has = fn, true
	}
	return nil
}

// settings reads on_failure and max_failures, with their defaults.
func (p *Policy) settings(globals sk.StringDict, errAt errAtFunc) error {
	p.OnFailure = OnFailureStop
	if v, ok := globals["on_failure"]; ok {
		s, _ := sk.AsString(v)
		switch a := FailureAction(s); a {
		case OnFailureStop, OnFailureContinue, OnFailureRollback:
			p.OnFailure = a
		default:
			return errAt("on_failure", `on_failure must be "stop", "continue" or "rollback", got %s`, v.String())
		}
	}
	p.MaxFailures = FailureBudget{Wave: Unlimited, Total: 0}
	if p.OnFailure == OnFailureContinue {
		p.MaxFailures.Total = Unlimited
	}
	if v, ok := globals["max_failures"]; ok && v != sk.None {
		b, err := budget(v)
		if err != nil {
			return errAt("max_failures", "max_failures %s", err)
		}
		p.MaxFailures = b
	}
	return nil
}

// budget parses max_failures: an int (total) or {"wave": n, "total": m}.
func budget(v sk.Value) (FailureBudget, error) {
	b := FailureBudget{Wave: Unlimited, Total: Unlimited}
	count := func(v sk.Value) (int, error) {
		var n int
		if err := sk.AsInt(v, &n); err != nil || n < 0 {
			return 0, fmt.Errorf("must be a non-negative int, got %s", v.String())
		}
		return n, nil
	}
	var err error
	switch v := v.(type) {
	case sk.Int:
		b.Total, err = count(v)
		return b, err
	case *sk.Dict:
		for _, item := range v.Items() {
			k, _ := sk.AsString(item[0])
			var n int
			if n, err = count(item[1]); err != nil {
				return b, fmt.Errorf("[%s] %w", item[0].String(), err)
			}
			switch k {
			case "wave":
				b.Wave = n
			case "total":
				b.Total = n
			default:
				return b, fmt.Errorf(`has key %s; only "wave" and "total" are allowed`, item[0].String())
			}
		}
		return b, nil
	}
	return b, fmt.Errorf(`must be an int (total) or a dict {"wave": n, "total": m}, got %s`, v.Type())
}

// takesOneArg reports whether fn can be called with one positional argument.
func takesOneArg(fn *sk.Function) bool {
	n := fn.NumParams()
	if fn.HasVarargs() {
		n--
	}
	if fn.HasKwargs() {
		n--
	}
	positional := n - fn.NumKwonlyParams()
	required := 0
	for i := 0; i < n; i++ {
		if fn.ParamDefault(i) == nil {
			if i >= positional {
				return false // a keyword-only parameter without default
			}
			required++
		}
	}
	return required <= 1 && (positional >= 1 || fn.HasVarargs())
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
	vals, byName, err := instanceValues(in)
	if err != nil {
		return nil, fmt.Errorf("select: %w", err)
	}
	if p.selectFn == nil {
		return append([]Instance(nil), in...), nil
	}
	c, cancel := p.newCall(ctx, "select", p.callTimeout())
	defer cancel()
	ret, err := p.exec(c, func(thread *sk.Thread) (sk.Value, error) {
		return sk.Call(thread, p.selectFn, sk.Tuple{listOf(vals)}, nil)
	})
	if err != nil {
		return nil, c.evalError(err)
	}
	elems, err := iterate("select", ret)
	if err != nil {
		return nil, returnError(p.selectFn, "select", "returned %s, want a list of instances or names", ret.Type())
	}
	var out []Instance
	seen := map[int]bool{}
	for i, e := range elems {
		idx, msg := lookup(e, byName, len(in))
		if msg != "" {
			return nil, returnError(p.selectFn, "select", "element %d of the result: %s", i, msg)
		}
		if seen[idx] {
			return nil, returnError(p.selectFn, "select", "returned %s twice", in[idx].Name)
		}
		seen[idx] = true
		out = append(out, in[idx])
	}
	return out, nil
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
	vals, byName, err := instanceValues(in)
	if err != nil {
		return nil, fmt.Errorf("waves: %w", err)
	}
	if p.wavesFn == nil {
		if len(in) == 0 {
			return nil, nil
		}
		return []Wave{{Instances: append([]Instance(nil), in...)}}, nil
	}
	c, cancel := p.newCall(ctx, "waves", p.callTimeout())
	defer cancel()
	ret, err := p.exec(c, func(thread *sk.Thread) (sk.Value, error) {
		return sk.Call(thread, p.wavesFn, sk.Tuple{listOf(vals)}, nil)
	})
	if err != nil {
		return nil, c.evalError(err)
	}
	return p.readWaves(ret, in, byName, c.canaries)
}

// readWaves turns what waves() returned into waves; every instance must be
// in exactly one. A wave is a canary wave when canaries() picked all its
// instances.
func (p *Policy) readWaves(ret sk.Value, in []Instance, byName map[string]int, canaries map[string]bool) ([]Wave, error) {
	const want = "want a list of waves, each a list of instances or names"
	waveVals, err := iterate("waves", ret)
	if err != nil {
		return nil, returnError(p.wavesFn, "waves", "returned %s, %s", ret.Type(), want)
	}
	var out []Wave
	waveOf := map[int]int{} // instance index -> wave number (1-based)
	for w, wv := range waveVals {
		elems, err := iterate("waves", wv)
		if err != nil {
			return nil, returnError(p.wavesFn, "waves", "wave %d is %s, %s", w+1, wv.Type(), want)
		}
		if len(elems) == 0 {
			continue
		}
		wave := Wave{Canary: true}
		for i, e := range elems {
			idx, msg := lookup(e, byName, len(in))
			if msg != "" {
				return nil, returnError(p.wavesFn, "waves", "wave %d, element %d: %s", w+1, i, msg)
			}
			if prev, dup := waveOf[idx]; dup {
				return nil, returnError(p.wavesFn, "waves", "%s is in wave %d and again in wave %d", in[idx].Name, prev, w+1)
			}
			waveOf[idx] = w + 1
			wave.Instances = append(wave.Instances, in[idx])
			wave.Canary = wave.Canary && canaries[in[idx].Name]
		}
		out = append(out, wave)
	}
	if len(waveOf) < len(in) {
		return nil, p.leftOut(in, waveOf)
	}
	return out, nil
}

func (p *Policy) leftOut(in []Instance, waveOf map[int]int) error {
	var missing []string
	for i := range in {
		if _, ok := waveOf[i]; !ok {
			missing = append(missing, in[i].Name)
		}
	}
	list := strings.Join(missing[:min(5, len(missing))], ", ")
	if len(missing) > 5 {
		list += fmt.Sprintf(" and %d more", len(missing)-5)
	}
	return returnError(p.wavesFn, "waves", "left out %d of the instances it was given (%s); put them in a wave or drop them in select()", len(missing), list)
}

func listOf(vals []*instanceValue) *sk.List {
	elems := make([]sk.Value, len(vals))
	for i, v := range vals {
		elems[i] = v
	}
	return sk.NewList(elems)
}

// lookup finds the input index of an instance or name returned by the
// policy; msg says what is wrong when it is neither.
func lookup(v sk.Value, byName map[string]int, n int) (idx int, msg string) {
	var name string
	switch v := v.(type) {
	case *instanceValue:
		name = v.inst.Name
	case sk.String:
		name = string(v)
	default:
		return 0, fmt.Sprintf("%s (%s) is neither an instance nor a name", v.String(), v.Type())
	}
	idx, ok := byName[name]
	if !ok {
		return 0, fmt.Sprintf("%q is not among the %d instances passed in", name, n)
	}
	return idx, ""
}

// CheckResult is the outcome of pre_activate or post_activate for one
// instance.
type CheckResult struct {
	OK bool
	// Message says why the check failed: fail()'s message exactly, or the
	// first line of Err ("file:line:col: post_activate(): ...").
	Message string
	// Err is the *Error of a failed check, nil when OK. Err.Fail is set
	// when the policy called fail(); errors.Is(Err, context.Canceled) when
	// the caller's context ended; ErrTimeLimit and ErrStepLimit for limits.
	Err      error
	Logs     []string // log() and print() output of this check
	Duration time.Duration
}

// PreActivate runs pre_activate(ctx) for inst within Env.CheckTimeout; it
// passes when the function is undefined. A failed pre-check means the host
// is skipped.
func (p *Policy) PreActivate(ctx context.Context, inst Instance) CheckResult {
	return p.check(ctx, "pre_activate", p.pre, inst)
}

// PostActivate runs post_activate(ctx) for inst within Env.CheckTimeout;
// it passes when the function is undefined. A failed post-check marks the
// host failed (and, with on_failure="rollback", to be rolled back).
func (p *Policy) PostActivate(ctx context.Context, inst Instance) CheckResult {
	return p.check(ctx, "post_activate", p.post, inst)
}

// check runs a check function. It fails when the function raises an error
// (fail() included) or returns False; any other return value passes.
func (p *Policy) check(ctx context.Context, name string, fn *sk.Function, inst Instance) CheckResult {
	if fn == nil {
		return CheckResult{OK: true}
	}
	start := time.Now()
	iv, err := newInstanceValue(&inst, 0)
	if err != nil {
		err = fmt.Errorf("%s: %w", name, err)
		return CheckResult{Message: err.Error(), Err: err}
	}
	c, cancel := p.newCall(ctx, name, p.checkTimeout())
	defer cancel()
	c.instance = iv
	ret, err := p.exec(c, func(thread *sk.Thread) (sk.Value, error) {
		return sk.Call(thread, fn, sk.Tuple{checkContext(iv)}, nil)
	})
	res := CheckResult{OK: true}
	switch {
	case err != nil:
		e := c.evalError(err)
		res = CheckResult{Message: e.Summary(), Err: e}
		if e.Fail {
			res.Message = e.Msg
		}
	case ret == sk.False:
		e := returnError(fn, name, "returned False")
		res = CheckResult{Message: e.Summary(), Err: e}
	}
	res.Logs = c.logsCopy()
	res.Duration = time.Since(start)
	return res
}

// ShouldStop reports whether the rollout must start no further hosts,
// given the failures so far in wave w and in the whole rollout. Failures
// are hosts whose activation or post_activate failed; hosts skipped by a
// failed pre_activate are not failures. Call it after each host finishes.
func (p *Policy) ShouldStop(w Wave, waveFailures, totalFailures int) bool {
	if w.Canary && waveFailures > 0 {
		return true
	}
	b := p.MaxFailures
	return (b.Wave != Unlimited && waveFailures > b.Wave) ||
		(b.Total != Unlimited && totalFailures > b.Total)
}
