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
//	rollback_succeeded = True  when any host fails, stop and return every
//	                       host the rollout changed to what it ran before,
//	                       the latest wave first (deploy --rollback-succeeded)
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
// A policy runs in a process of its own, the policy evaluator: this
// program started again, which this package's init recognises and turns
// into a server of policy calls before main runs. nix-hive answers the
// builtins that reach out (ctx.run, http_get, sleep, log) and gets back
// nothing but indices, settings and messages of at most 16 KiB (longer
// ones are cut; ctx.run takes commands of up to 1 MiB). One evaluator
// serves every call of a policy running at once; after 5 idle seconds it
// exits, and the next call starts a new one, which runs the file's top
// level again without showing its log() output.
//
// Every call (loading the file, select, waves, each check) runs on a fresh
// thread with at most Env.MaxSteps execution steps and a time limit
// (Env.CallTimeout for loading, select and waves, Env.CheckTimeout for
// checks). At the time limit, or when its context ends, the call is
// stopped: builtins return at once and the interpreter stops at its next
// step. One step can take minutes (a comparison, a sort), so a call that
// has not stopped 200 ms after its deadline is abandoned, and its
// evaluator is killed as soon as no other call runs in it; the call
// returns then either way. A Runner or http.Client that ignores its
// context is abandoned too (its goroutine ends when it returns).
//
// The memory of a policy, all its calls running at once together, is
// limited to Env.MaxMemory (DefaultMaxMemory, 256 MiB). The evaluator
// reads what its Go runtime holds every millisecond (an allocation counts
// when it is made, touched or not), and nix-hive reads the evaluator's
// resident memory every 2 ms where /proc exists (a stop of the world can
// hold the evaluator's own reading up while one step copies a gigabyte).
// Past the limit, every call running is stopped with ErrMemoryLimit and
// the evaluator exits or is killed; a later call starts a new one. One
// step cannot be interrupted, so the step that passes the limit may add
// to it before it is stopped (a doubled list holds its old and new
// copies): the evaluator holds less than twice the limit at its peak
// (TestMemoryLimit -v and BenchmarkHostilePolicy print what it held).
// A check stopped by the memory limit fails its host, which follows
// on_failure, and the rollout stops whatever max_failures allows
// (Policy.ShouldStop): the policy is broken.
//
// while loops and top-level if/for are allowed; recursion is not; a
// top-level name is assigned once, so a duplicated def is an error.
//
// # Errors
//
// Policy bugs — syntax errors, runtime errors, limits, wrong return values
// — are *Error values pointing at file:line:col with the Starlark
// backtrace (a call stopped inside one step, or killed, names the file
// and the function only). A limit reads "policy exceeded 256 MiB (the
// memory limit)", "policy exceeded 5s (the time limit)" or "policy
// exceeded 10000000 execution steps"; Error.Err says which (ErrMemoryLimit,
// ErrTimeLimit, ErrStepLimit). Load, Select and Waves return them; checks
// report them in CheckResult.
package starlark
