package starlark

import (
	"errors"
	"fmt"

	"go.starlark.net/resolve"
	sk "go.starlark.net/starlark"
	"go.starlark.net/syntax"
)

var (
	// ErrTimeLimit is wrapped by the *Error of a policy call that ran past
	// Env.CallTimeout or Env.CheckTimeout.
	ErrTimeLimit = errors.New("policy call exceeded its time limit")
	// ErrStepLimit is wrapped by the *Error of a policy call that executed
	// more than Env.MaxSteps Starlark steps, typically an endless loop.
	ErrStepLimit = errors.New("policy call exceeded its step limit")
	// ErrMemoryLimit is wrapped by the *Error of a policy call that was
	// running when the policy's memory passed Env.MaxMemory.
	ErrMemoryLimit = errors.New("policy exceeded its memory limit")
	// ErrEvaluator is wrapped by the error of a policy call whose
	// evaluator process could not be started or ended unexpectedly.
	ErrEvaluator = errors.New("the policy evaluator failed")
)

// Error is a problem located in the policy file: a syntax error, a runtime
// error, a limit hit, a wrong return value, or fail() called by the policy.
// Load, Select and Waves return it for policy bugs; checks carry it in
// CheckResult.Err.
type Error struct {
	File      string
	Line, Col int    // 0 when the problem has no position (e.g. the file is empty)
	Func      string // policy function that ran: "select", "waves", "pre_activate", "post_activate"; "" while loading
	Msg       string
	Backtrace string // Starlark traceback, "" for syntax errors and return-value checks
	// Fail reports that the policy itself raised the error with fail(msg);
	// Msg is then exactly msg. In a check that is a verdict, not a bug.
	Fail bool
	// Err is the cause when the call was stopped from outside the policy:
	// ErrTimeLimit, ErrStepLimit, ErrMemoryLimit, or the cause of the
	// caller's context (context.Canceled, context.DeadlineExceeded);
	// ErrEvaluator when the evaluator process failed. Nil otherwise.
	Err error
}

// Error returns "file:line:col: func(): msg" followed, on the next lines, by
// the Starlark backtrace when there is one.
func (e *Error) Error() string {
	s := e.Summary()
	if e.Backtrace != "" {
		s += "\n" + e.Backtrace
	}
	return s
}

// Summary is the first line of Error: position, function and message.
func (e *Error) Summary() string {
	pos := e.File
	if e.Line > 0 {
		pos = fmt.Sprintf("%s:%d:%d", e.File, e.Line, e.Col)
	}
	if e.Func != "" {
		return fmt.Sprintf("%s: %s(): %s", pos, e.Func, e.Msg)
	}
	return fmt.Sprintf("%s: %s", pos, e.Msg)
}

func (e *Error) Unwrap() error { return e.Err }

// failure is the error fail() raises; it survives the interpreter's
// wrapping in EvalError so a check can tell a verdict from a bug.
type failure struct{ msg string }

func (f *failure) Error() string { return f.msg }

func (e *Error) setPos(pos syntax.Position) {
	if !pos.IsValid() {
		return
	}
	e.File, e.Line, e.Col = pos.Filename(), int(pos.Line), int(pos.Col)
}

// compileError converts a syntax or resolve error of file into an *Error.
func compileError(file string, err error) *Error {
	e := &Error{File: file, Msg: err.Error()}
	var serr syntax.Error
	var rerrs resolve.ErrorList
	switch {
	case errors.As(err, &serr):
		e.setPos(serr.Pos)
		e.Msg = serr.Msg
	case errors.As(err, &rerrs):
		e.setPos(rerrs[0].Pos)
		e.Msg = rerrs[0].Msg
		if n := len(rerrs) - 1; n > 0 {
			e.Msg += fmt.Sprintf(" (and %d more errors)", n)
		}
	}
	return e
}

// innermost is the position in the policy file closest to where err was
// raised, skipping frames of built-in functions. A frame still at its
// function's def (the call failed before the body ran: wrong arguments,
// recursion) is skipped too, so the error points at the call site.
func innermost(stack sk.CallStack, entries map[syntax.Position]bool) syntax.Position {
	var found syntax.Position
	for i := len(stack) - 1; i >= 0; i-- {
		pos := stack[i].Pos
		if !pos.IsValid() || pos.Filename() == "<builtin>" {
			continue
		}
		if !found.IsValid() {
			found = pos
		}
		if !entries[pos] {
			return pos
		}
	}
	return found
}

// returnError reports a wrong return value of fn at its definition, since
// the interpreter no longer knows which return statement produced it.
func returnError(fn *sk.Function, name, format string, args ...any) *Error {
	e := &Error{File: fn.Position().Filename(), Func: name, Msg: fmt.Sprintf(format, args...)}
	e.setPos(fn.Position())
	return e
}
