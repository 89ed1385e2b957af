// Package starlark runs rollout policies: it loads a Starlark policy file
// (hive.star), orders instances into waves and runs activation checks.
//
// The package touches nothing by itself. Commands reach hosts only through
// Env.Runner, HTTP only through Env.HTTP, time only through Env.Sleep, so
// Load, Select and Waves are safe to call from `nix-hive plan`, and tests
// inject fakes.
//
// # The policy file
//
// A policy may define, all optional:
//
//	select(instances)      -> list of instances or names to deploy (default: all)
//	waves(instances)       -> list of waves, each a list of instances or names
//	                          (default: one wave of everything selected)
//	pre_activate(ctx)      check before activation; failing skips the host
//	post_activate(ctx)     check after activation; failing marks the host failed
//	on_failure = "stop"    "stop", "continue" or "rollback" (see FailureAction)
//	max_failures = 2       failures tolerated overall, or
//	max_failures = {"wave": 1, "total": 3}  per wave and overall (either key optional)
//
// Defaults for max_failures: 0 overall for "stop" and "rollback", unlimited
// for "continue". A wave made only of instances picked by canaries() is a
// canary wave: any failure in it stops the rollout (see Policy.ShouldStop).
//
// waves must place every instance it was given exactly once; names not
// among its input, duplicates and left-out instances are errors (drop
// instances in select instead). Empty waves are dropped.
//
// A check fails when it raises an error — fail(msg) for a deliberate
// verdict, or any runtime error — or returns False; other return values
// pass. Checks of different hosts may run concurrently.
//
// Each instance is a read-only value of type "instance" with the attributes
// name, system, host, store, jump (strings, "" when unset), tags (tuple of
// strings) and meta (frozen dict from the hive's meta attrset, {} when
// absent). Instances compare, sort and hash by name.
//
// # Builtins
//
// Besides Starlark's universal functions (len, sorted, range, ...):
//
//	ctx.instance
//	    The instance a check runs for.
//	ctx.run(cmd, timeout=None) -> struct(stdout, stderr, code)
//	    Runs the shell command cmd, verbatim, on the instance over its
//	    pooled SSH connection. A non-zero exit is not an error: inspect
//	    code. Raises on transport errors and when timeout (seconds) passes.
//	http_get(url, timeout=10) -> struct(status, body)
//	    GET an http:// or https:// URL; body is at most MaxHTTPBody bytes.
//	    Any status is a result; raises on transport errors and timeout.
//	    Only in checks, so that plan touches no host.
//	sleep(seconds)
//	    Waits; int or float seconds.
//	retry(fn, attempts=3, delay=1) -> fn's result
//	    Calls fn() until it neither raises nor returns False, at most
//	    attempts times, sleeping delay seconds in between; then raises
//	    "gave up after N attempts: <last error>". Logs each failed attempt.
//	fail(msg)
//	    Raises msg. In a check: the check fails with exactly msg.
//	log(msg)
//	    Sends msg (str(msg) if not a string) to Env.Log; print does too.
//	batches(list, size) -> list of lists
//	    Consecutive slices of size elements; the last may be shorter.
//	canaries(list, n) -> list
//	    n elements, those tagged "canary" first, then the rest, each group
//	    in list order; remembered to mark canary waves.
//	by_tag(list, tag) -> list
//	    The instances of list that carry tag.
//
// There is no load, no file system, no process and no network beyond these.
//
// # Limits
//
// Every call (loading the file, select, waves, each check) runs on a fresh
// thread with at most Env.MaxSteps execution steps and a time limit
// (Env.CallTimeout for loading, select and waves, Env.CheckTimeout for
// checks). A call that hits a limit, or whose context ends, is cancelled
// at once: builtins return early and the interpreter stops at its next
// step (a Runner or http.Client that ignores its context is abandoned after
// a grace period of two seconds). while loops and top-level if/for are
// allowed; recursion is not; a top-level name is assigned once, so a
// duplicated def is an error.
//
// # Errors
//
// Policy bugs — syntax errors, runtime errors, limits, wrong return values
// — are *Error values pointing at file:line:col with the Starlark
// backtrace. Load, Select and Waves return them; checks report them in
// CheckResult.
package starlark
