package starlark

import (
	"fmt"
	"strings"

	"github.com/nix-hive/nix-hive/internal/spelling"
	sk "go.starlark.net/starlark"
	"go.starlark.net/syntax"
)

// This file is the evaluator's side of a policy: the loaded file and what
// its calls do with Starlark values. Nothing here runs in nix-hive's own
// process.

// fileOptions allow while loops and top-level if/for so users can write
// polling loops; the step and time limits keep them safe. Recursion stays
// off: it is never needed for a rollout and deep recursion costs stack.
var fileOptions = &syntax.FileOptions{Set: true, While: true, TopLevelControl: true}

// program is a policy file loaded in the evaluator: its globals are
// frozen, so its functions may run on many threads at once.
type program struct {
	file                         string
	entries                      map[syntax.Position]bool // where each def and lambda starts
	selectFn, wavesFn, pre, post *sk.Function
	settings                     settings
}

// compile parses and runs the policy file on c's thread and checks its
// settings and functions.
func compile(c *call, file string, src []byte) (*program, *outcome) {
	// SourceProgramOptions + Init is what ExecFileOptions does; doing it in
	// two steps keeps the syntax tree, which locates the settings.
	f, prog, err := sk.SourceProgramOptions(fileOptions, file, src, predeclared.Has)
	if err != nil {
		return nil, &outcome{Err: compileError(file, err)}
	}
	globals, err := prog.Init(c.thread, predeclared)
	if err != nil {
		return nil, c.evalError(err)
	}
	globals.Freeze()
	p := &program{file: file, entries: functionStarts(f)}
	if err := p.configure(globals, assignments(f)); err != nil {
		return nil, &outcome{Err: err}
	}
	return p, &outcome{Settings: p.settings}
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
var settingNames = []string{"pre_activate", "post_activate", "max_failures", "on_failure", "rollback_succeeded"}

// configure reads the settings and functions out of the frozen globals.
func (p *program) configure(globals sk.StringDict, pos map[string]syntax.Position) *Error {
	errAt := func(name, format string, args ...any) *Error {
		e := &Error{File: p.file, Msg: fmt.Sprintf(format, args...)}
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
	return p.readSettings(globals, errAt)
}

type errAtFunc func(name, format string, args ...any) *Error

// functions picks select, waves, pre_activate and post_activate out of
// the globals.
func (p *program) functions(globals sk.StringDict, errAt errAtFunc) *Error {
	s := &p.settings
	fns := []struct {
		name string
		dst  **sk.Function
		has  *bool
	}{
		{"select", &p.selectFn, &s.HasSelect},
		{"waves", &p.wavesFn, &s.HasWaves},
		{"pre_activate", &p.pre, &s.HasPre},
		{"post_activate", &p.post, &s.HasPost},
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

// readSettings reads on_failure and max_failures, with their defaults.
func (p *program) readSettings(globals sk.StringDict, errAt errAtFunc) *Error {
	s := &p.settings
	s.OnFailure = OnFailureStop
	if v, ok := globals["on_failure"]; ok {
		str, _ := sk.AsString(v)
		switch a := FailureAction(str); a {
		case OnFailureStop, OnFailureContinue, OnFailureRollback:
			s.OnFailure = a
		default:
			return errAt("on_failure", `on_failure must be "stop", "continue" or "rollback", got %s`, v.String())
		}
	}
	s.MaxFailures = FailureBudget{Wave: Unlimited, Total: 0}
	if s.OnFailure == OnFailureContinue {
		s.MaxFailures.Total = Unlimited
	}
	if v, ok := globals["max_failures"]; ok && v != sk.None {
		b, err := budget(v)
		if err != nil {
			return errAt("max_failures", "max_failures %s", err)
		}
		s.MaxFailures = b
	}
	if v, ok := globals["rollback_succeeded"]; ok {
		b, isBool := v.(sk.Bool)
		if !isBool {
			return errAt("rollback_succeeded", "rollback_succeeded must be True or False, got %s", v.String())
		}
		s.RollbackSucceeded = bool(b)
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

// selectIn calls select(instances) and returns the indices of the
// instances it kept, in the order it returned them. select may return
// instances or names; each must be one of in, at most once.
func (p *program) selectIn(c *call, in []Instance) *outcome {
	vals, byName, err := instanceValues(in)
	if err != nil {
		return &outcome{Err: &Error{File: p.file, Func: "select", Msg: err.Error()}}
	}
	ret, err := sk.Call(c.thread, p.selectFn, sk.Tuple{listOf(vals)}, nil)
	if err != nil {
		return c.evalError(err)
	}
	elems, err := iterate("select", ret)
	if err != nil {
		return &outcome{Err: returnError(p.selectFn, "select", "returned %s, want a list of instances or names", ret.Type())}
	}
	out := &outcome{Selected: []int{}}
	seen := map[int]bool{}
	for i, e := range elems {
		idx, msg := lookup(e, byName, len(in))
		if msg != "" {
			return &outcome{Err: returnError(p.selectFn, "select", "element %d of the result: %s", i, msg)}
		}
		if seen[idx] {
			return &outcome{Err: returnError(p.selectFn, "select", "returned %s twice", in[idx].Name)}
		}
		seen[idx] = true
		out.Selected = append(out.Selected, idx)
	}
	return out
}

// wavesIn calls waves(instances); see Policy.Waves.
func (p *program) wavesIn(c *call, in []Instance) *outcome {
	vals, byName, err := instanceValues(in)
	if err != nil {
		return &outcome{Err: &Error{File: p.file, Func: "waves", Msg: err.Error()}}
	}
	ret, err := sk.Call(c.thread, p.wavesFn, sk.Tuple{listOf(vals)}, nil)
	if err != nil {
		return c.evalError(err)
	}
	return p.readWaves(ret, in, byName, c.canaries)
}

// readWaves turns what waves() returned into waves of indices; every
// instance must be in exactly one. A wave is a canary wave when
// canaries() picked all its instances.
func (p *program) readWaves(ret sk.Value, in []Instance, byName map[string]int, canaries map[string]bool) *outcome {
	const want = "want a list of waves, each a list of instances or names"
	fail := func(format string, args ...any) *outcome {
		return &outcome{Err: returnError(p.wavesFn, "waves", format, args...)}
	}
	waveVals, err := iterate("waves", ret)
	if err != nil {
		return fail("returned %s, %s", ret.Type(), want)
	}
	out := &outcome{}
	waveOf := map[int]int{} // instance index -> wave number (1-based)
	for w, wv := range waveVals {
		elems, err := iterate("waves", wv)
		if err != nil {
			return fail("wave %d is %s, %s", w+1, wv.Type(), want)
		}
		if len(elems) == 0 {
			continue
		}
		var wave []int
		canary := true
		for i, e := range elems {
			idx, msg := lookup(e, byName, len(in))
			if msg != "" {
				return fail("wave %d, element %d: %s", w+1, i, msg)
			}
			if prev, dup := waveOf[idx]; dup {
				return fail("%s is in wave %d and again in wave %d", in[idx].Name, prev, w+1)
			}
			waveOf[idx] = w + 1
			wave = append(wave, idx)
			canary = canary && canaries[in[idx].Name]
		}
		out.Waves = append(out.Waves, wave)
		out.Canary = append(out.Canary, canary)
	}
	if len(waveOf) < len(in) {
		return &outcome{Err: p.leftOut(in, waveOf)}
	}
	return out
}

func (p *program) leftOut(in []Instance, waveOf map[int]int) *Error {
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
		return 0, fmt.Sprintf("%s (%s) is neither an instance nor a name", clip(v.String()), v.Type())
	}
	idx, ok := byName[name]
	if !ok {
		return 0, fmt.Sprintf("%q is not among the %d instances passed in", clip(name), n)
	}
	return idx, ""
}

// check runs the check function called name for inst. It fails when the
// function raises an error (fail() included) or returns False; any other
// return value passes.
func (p *program) check(c *call, name string, inst Instance) *outcome {
	fn := p.pre
	if name == "post_activate" {
		fn = p.post
	}
	iv, err := newInstanceValue(&inst, 0)
	if err != nil {
		return &outcome{Err: &Error{File: p.file, Func: name, Msg: err.Error()}}
	}
	c.instance = iv
	ret, err := sk.Call(c.thread, fn, sk.Tuple{checkContext(iv)}, nil)
	switch {
	case err != nil:
		return c.evalError(err)
	case ret == sk.False:
		return &outcome{Err: returnError(fn, name, "returned False")}
	}
	return &outcome{}
}
