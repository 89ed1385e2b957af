package starlark

import (
	"errors"
	"fmt"
	"math"
	"net/url"
	"time"

	sk "go.starlark.net/starlark"
	"go.starlark.net/starlarkstruct"
)

const (
	// DefaultHTTPTimeout bounds an http_get call without timeout=.
	DefaultHTTPTimeout = 10 * time.Second
	// MaxHTTPBody is how much of a response body http_get keeps.
	MaxHTTPBody = 1 << 20
)

// predeclared are the names a policy sees besides Starlark's universal
// builtins. They hold no state: everything per call comes from the thread.
var predeclared = sk.StringDict{
	"batches":  sk.NewBuiltin("batches", batches),
	"by_tag":   sk.NewBuiltin("by_tag", byTag),
	"canaries": sk.NewBuiltin("canaries", canaries),
	"fail":     sk.NewBuiltin("fail", fail),
	"http_get": sk.NewBuiltin("http_get", httpGet),
	"log":      sk.NewBuiltin("log", logMsg),
	"retry":    sk.NewBuiltin("retry", retry),
	"sleep":    sk.NewBuiltin("sleep", sleep),
}

// seconds converts a Starlark number of seconds into a duration.
func seconds(fn, param string, v sk.Value) (time.Duration, error) {
	f, ok := sk.AsFloat(v)
	if !ok {
		return 0, fmt.Errorf("%s: %s must be a number of seconds, got %s", fn, param, v.Type())
	}
	if f < 0 || math.IsNaN(f) || f > math.MaxInt64/float64(time.Second) {
		return 0, fmt.Errorf("%s: %s must be between 0 and a few centuries of seconds, got %v", fn, param, v)
	}
	return time.Duration(f * float64(time.Second)), nil
}

func iterate(fn string, v sk.Value) ([]sk.Value, error) {
	switch v := v.(type) {
	case *sk.List:
		out := make([]sk.Value, v.Len())
		for i := range out {
			out[i] = v.Index(i)
		}
		return out, nil
	case sk.Tuple:
		return append([]sk.Value(nil), v...), nil
	}
	return nil, fmt.Errorf("%s: want a list or tuple, got %s", fn, v.Type())
}

// batches(list, size) splits list into consecutive lists of size elements.
func batches(_ *sk.Thread, b *sk.Builtin, args sk.Tuple, kwargs []sk.Tuple) (sk.Value, error) {
	var list sk.Value
	var size int
	if err := sk.UnpackArgs(b.Name(), args, kwargs, "list", &list, "size", &size); err != nil {
		return nil, err
	}
	elems, err := iterate(b.Name(), list)
	if err != nil {
		return nil, err
	}
	if size < 1 {
		return nil, fmt.Errorf("%s: size must be at least 1, got %d", b.Name(), size)
	}
	var out []sk.Value
	for len(elems) > 0 {
		n := min(size, len(elems))
		out = append(out, sk.NewList(append([]sk.Value(nil), elems[:n]...)))
		elems = elems[n:]
	}
	return sk.NewList(out), nil
}

// canaries(list, n) picks n elements, those tagged "canary" first, each
// group in list order, and remembers them so Waves can mark their wave.
func canaries(thread *sk.Thread, b *sk.Builtin, args sk.Tuple, kwargs []sk.Tuple) (sk.Value, error) {
	var list sk.Value
	var n int
	if err := sk.UnpackArgs(b.Name(), args, kwargs, "list", &list, "n", &n); err != nil {
		return nil, err
	}
	elems, err := iterate(b.Name(), list)
	if err != nil {
		return nil, err
	}
	if n < 0 {
		return nil, fmt.Errorf("%s: n must not be negative, got %d", b.Name(), n)
	}
	var tagged, others []sk.Value
	for _, e := range elems {
		if iv, ok := e.(*instanceValue); ok && iv.hasTag("canary") {
			tagged = append(tagged, e)
		} else {
			others = append(others, e)
		}
	}
	picked := append(tagged, others...)[:min(n, len(elems))]
	c := callOf(thread)
	if c.canaries == nil {
		c.canaries = map[string]bool{}
	}
	for _, e := range picked {
		switch e := e.(type) {
		case *instanceValue:
			c.canaries[e.inst.Name] = true
		case sk.String:
			c.canaries[string(e)] = true
		}
	}
	return sk.NewList(append([]sk.Value(nil), picked...)), nil
}

// by_tag(list, tag) keeps the instances of list that carry tag.
func byTag(_ *sk.Thread, b *sk.Builtin, args sk.Tuple, kwargs []sk.Tuple) (sk.Value, error) {
	var list sk.Value
	var tag string
	if err := sk.UnpackArgs(b.Name(), args, kwargs, "list", &list, "tag", &tag); err != nil {
		return nil, err
	}
	elems, err := iterate(b.Name(), list)
	if err != nil {
		return nil, err
	}
	var out []sk.Value
	for i, e := range elems {
		iv, ok := e.(*instanceValue)
		if !ok {
			return nil, fmt.Errorf("%s: element %d is a %s, want an instance", b.Name(), i, e.Type())
		}
		if iv.hasTag(tag) {
			out = append(out, e)
		}
	}
	return sk.NewList(out), nil
}

// fail(msg) raises an error the checks report as the policy's verdict.
func fail(_ *sk.Thread, b *sk.Builtin, args sk.Tuple, kwargs []sk.Tuple) (sk.Value, error) {
	var msg sk.Value
	if err := sk.UnpackArgs(b.Name(), args, kwargs, "msg", &msg); err != nil {
		return nil, err
	}
	return nil, &failure{msg: text(msg)}
}

// log(msg) sends msg to Env.Log and the call's logs.
func logMsg(thread *sk.Thread, b *sk.Builtin, args sk.Tuple, kwargs []sk.Tuple) (sk.Value, error) {
	var msg sk.Value
	if err := sk.UnpackArgs(b.Name(), args, kwargs, "msg", &msg); err != nil {
		return nil, err
	}
	callOf(thread).log(text(msg))
	return sk.None, nil
}

// text is str(v) without the quotes a string would get from String().
func text(v sk.Value) string {
	if s, ok := sk.AsString(v); ok {
		return s
	}
	return v.String()
}

// sleep(seconds) waits through Env.Sleep, ending early with the call.
func sleep(thread *sk.Thread, b *sk.Builtin, args sk.Tuple, kwargs []sk.Tuple) (sk.Value, error) {
	var secs sk.Value
	if err := sk.UnpackArgs(b.Name(), args, kwargs, "seconds", &secs); err != nil {
		return nil, err
	}
	d, err := seconds(b.Name(), "seconds", secs)
	if err != nil {
		return nil, err
	}
	if err := callOf(thread).sleep(d); err != nil {
		return nil, fmt.Errorf("%s: %w", b.Name(), err)
	}
	return sk.None, nil
}

// retry(fn, attempts=3, delay=1) calls fn until it neither raises nor
// returns False, sleeping delay seconds between attempts.
func retry(thread *sk.Thread, b *sk.Builtin, args sk.Tuple, kwargs []sk.Tuple) (sk.Value, error) {
	var fn sk.Callable
	attempts := 3
	var delay sk.Value = sk.MakeInt(1)
	if err := sk.UnpackArgs(b.Name(), args, kwargs, "fn", &fn, "attempts?", &attempts, "delay?", &delay); err != nil {
		return nil, err
	}
	if attempts < 1 {
		return nil, fmt.Errorf("%s: attempts must be at least 1, got %d", b.Name(), attempts)
	}
	d, err := seconds(b.Name(), "delay", delay)
	if err != nil {
		return nil, err
	}
	c := callOf(thread)
	var last error
	for i := 1; i <= attempts; i++ {
		v, err := sk.Call(thread, fn, nil, nil)
		if err == nil && v != sk.False {
			return v, nil
		}
		if cause := c.stopped(); cause != nil {
			if err == nil {
				err = cause
			}
			return nil, err // the call is over; evalError reports why
		}
		last = err
		if err == nil {
			last = &failure{msg: fmt.Sprintf("%s returned False", fn.Name())}
		}
		c.log(fmt.Sprintf("retry: attempt %d of %d failed: %s", i, attempts, attemptMessage(c, last)))
		if i < attempts {
			if err := c.sleep(d); err != nil {
				return nil, fmt.Errorf("%s: %w", b.Name(), err)
			}
		}
	}
	msg := fmt.Sprintf("gave up after %d attempts: %s", attempts, attemptMessage(c, last))
	if f := (*failure)(nil); errors.As(last, &f) {
		return nil, &failure{msg: msg}
	}
	return nil, errors.New(msg)
}

// attemptMessage describes a failed attempt: fail()'s message as is,
// other errors with the position they were raised at.
func attemptMessage(c *call, err error) string {
	if f := (*failure)(nil); errors.As(err, &f) {
		return f.msg
	}
	if ee := (*sk.EvalError)(nil); errors.As(err, &ee) {
		if pos := innermost(ee.CallStack, c.entries); pos.IsValid() {
			return fmt.Sprintf("%s: %s", pos, ee.Msg)
		}
		return ee.Msg
	}
	return err.Error()
}

// http_get(url, timeout=10) fetches url and returns struct(status, body).
// nix-hive makes the request with Env.HTTP (see invocation.httpGet).
func httpGet(thread *sk.Thread, b *sk.Builtin, args sk.Tuple, kwargs []sk.Tuple) (sk.Value, error) {
	var rawURL string
	var timeout sk.Value = sk.None
	if err := sk.UnpackArgs(b.Name(), args, kwargs, "url", &rawURL, "timeout?", &timeout); err != nil {
		return nil, err
	}
	c := callOf(thread)
	if c.instance == nil {
		return nil, fmt.Errorf("%s: only available in pre_activate and post_activate, so that loading, select and waves touch no host", b.Name())
	}
	if len(rawURL) > maxText {
		return nil, fmt.Errorf("%s: the URL is %d bytes, at most %d are allowed", b.Name(), len(rawURL), maxText)
	}
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", b.Name(), err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("%s: %q: only http:// and https:// URLs are allowed", b.Name(), rawURL)
	}
	d := DefaultHTTPTimeout
	if timeout != sk.None {
		if d, err = seconds(b.Name(), "timeout", timeout); err != nil {
			return nil, err
		}
	}
	r, err := c.ask(request{Op: "http_get", URL: rawURL, Timeout: d, HasTimeout: true})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", b.Name(), err)
	}
	if r.Err != "" {
		return nil, errors.New(r.Err)
	}
	return starlarkstruct.FromStringDict(starlarkstruct.Default, sk.StringDict{
		"status": sk.MakeInt(r.Status),
		"body":   sk.String(r.Body),
	}), nil
}

// run is ctx.run(cmd, timeout=None): cmd on the check's instance through
// Env.Runner (see invocation.run). A non-zero exit is a result, not an
// error.
func run(thread *sk.Thread, b *sk.Builtin, args sk.Tuple, kwargs []sk.Tuple) (sk.Value, error) {
	var cmd string
	var timeout sk.Value = sk.None
	if err := sk.UnpackArgs(b.Name(), args, kwargs, "cmd", &cmd, "timeout?", &timeout); err != nil {
		return nil, err
	}
	if len(cmd) > maxCommand {
		return nil, fmt.Errorf("%s: the command is %d bytes, at most %d are allowed", b.Name(), len(cmd), maxCommand)
	}
	req := request{Op: "run", Cmd: cmd}
	if timeout != sk.None {
		d, err := seconds(b.Name(), "timeout", timeout)
		if err != nil {
			return nil, err
		}
		req.Timeout, req.HasTimeout = d, true
	}
	r, err := callOf(thread).ask(req)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", b.Name(), err)
	}
	if r.Err != "" {
		return nil, errors.New(r.Err)
	}
	return starlarkstruct.FromStringDict(starlarkstruct.Default, sk.StringDict{
		"stdout": sk.String(r.Stdout),
		"stderr": sk.String(r.Stderr),
		"code":   sk.MakeInt(r.Code),
	}), nil
}

var runBuiltin = sk.NewBuiltin("run", run)

// checkContext is the ctx argument of pre_activate and post_activate.
func checkContext(iv *instanceValue) sk.Value {
	return starlarkstruct.FromStringDict(sk.String("ctx"), sk.StringDict{
		"instance": iv,
		"run":      runBuiltin,
	})
}
