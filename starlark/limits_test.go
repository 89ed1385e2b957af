package starlark

import (
	"context"
	"errors"
	"runtime"
	"runtime/metrics"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// testMaxMemory is the memory limit of the tests: small, so that a policy
// that is not stopped shows at once (each hostile policy below grows to
// 16 times it, about 1 GiB, and then ends by itself).
const testMaxMemory = 64 << 20

// hostile are policies that take memory in the ways issue 25 lists: many
// small steps (doubling a list, growing a dict) and single steps no step
// or time limit can interrupt (a repetition, a builtin call, a join).
var hostile = []struct {
	name, fn, src string
}{
	{"list doubling in waves", "waves", `
def waves(instances):
    l = [0]
    while len(l) < 1 << 26:
        l = l + l
    return [instances]
`},
	{"list doubling in post_activate", "post_activate", `
def post_activate(ctx):
    l = [ctx.instance]
    while len(l) < 1 << 26:
        l = l + l
`},
	{"string repetition", "waves", `
def waves(instances):
    s = "x" * ((1 << 30) - 1)
    return [instances]
`},
	{"dict growth loop", "post_activate", `
def post_activate(ctx):
    d = {}
    for i in range(1 << 22):
        d[i] = [i, i, i, i, i, i, i, i]
`},
	{"one builtin call", "select", `
def select(instances):
    return instances + list(range(1 << 26))[:0]
`},
	{"one join", "pre_activate", `
def pre_activate(ctx):
    s = ("x" * 1000000).join([""] * 1000)
`},
	{"deep value printed", "waves", `
def waves(instances):
    l = []
    for i in range(300000):
        l = [l]
    return [instances, str(l)]
`},
	{"loading", "", `
def grow():
    l = [0]
    for i in range(26):
        l = l + l
grow()
`},
}

// TestMemoryLimit: every hostile policy is stopped with an error that
// names the file, the function and the limit; the evaluator's peak
// resident size, less an idle evaluator's, stayed under twice the limit;
// and nix-hive's own process did not grow by the policy's memory. With -v
// it prints what it measured.
func TestMemoryLimit(t *testing.T) {
	idle := idleRSS(t)
	for _, tt := range hostile {
		t.Run(tt.name, func(t *testing.T) {
			// Time limits no loaded machine reaches: this is about memory.
			env := Env{MaxMemory: testMaxMemory, CallTimeout: time.Minute, CheckTimeout: time.Minute}
			watch := watchHeld()
			start := time.Now()
			p, err := callHostile(t, tt.fn, tt.src, env)
			elapsed := time.Since(start)
			grew := watch()
			if grew >= testMaxMemory {
				t.Errorf("nix-hive's own process grew by %s, want the policy's memory kept out of it", mib(grew))
			}
			if !errors.Is(err, ErrMemoryLimit) {
				t.Fatalf("err = %v, want ErrMemoryLimit", err)
			}
			perr := policyError(t, err)
			where := "hive.star"
			if tt.fn != "" {
				where += ":.*" + tt.fn + "()"
			}
			if perr.File != "hive.star" || perr.Func != tt.fn || !strings.Contains(perr.Summary(), "policy exceeded 64 MiB (the memory limit) and was stopped") {
				t.Errorf("error %q, want one naming %s and the limit", perr.Summary(), where)
			}
			mapped, rss := lastEvaluator(t, p)
			if rss == 0 {
				t.Fatal("the evaluator's resident size is unknown")
			}
			// Both over-count what the policy held in memory: the count
			// includes memory not yet touched (a single step asking for a
			// GiB), the resident size the race detector's shadow memory.
			// There is no count when nix-hive killed the evaluator.
			held := rss - min(idle, rss)
			counted := "was killed by nix-hive's watch before it counted"
			if mapped > 0 {
				held = min(mapped, held)
				counted = "counted " + mib(mapped) + ", touched or not"
			}
			t.Logf("hostile policy (%s): peak %s (limit %s), stopped after %v [the evaluator %s; its max RSS was %s, %s when idle]; nix-hive's own process grew %s",
				tt.name, mib(held), mib(testMaxMemory), elapsed.Round(time.Millisecond), counted, mib(rss), mib(idle), mib(grew))
			if held >= 2*testMaxMemory {
				t.Errorf("the policy held %s at its peak, want under twice the limit (%s)", mib(held), mib(2*testMaxMemory))
			}
		})
	}
}

// callHostile loads src and makes the call fn names, returning its error
// (from Load when fn is "").
func callHostile(t *testing.T, fn, src string, env Env) (*Policy, error) {
	t.Helper()
	ctx := context.Background()
	if fn == "" {
		// What Load does, keeping the policy whose evaluator ran the file.
		p := &Policy{File: "hive.star", env: env, ev: &evaluator{file: "hive.star", src: []byte(src)}}
		_, err := p.ev.load(ctx, p)
		return p, err
	}
	p := mustLoad(t, src, env)
	var err error
	switch fn {
	case "select":
		_, err = p.Select(ctx, []Instance{www1})
	case "waves":
		_, err = p.Waves(ctx, []Instance{www1})
	case "pre_activate":
		err = p.PreActivate(ctx, www1).Err
	case "post_activate":
		err = p.PostActivate(ctx, www1).Err
	}
	return p, err
}

// TestMemoryLimitStopsEveryCheck: the limit is for all calls of a policy
// together, so the checks running beside the one that passes it are
// stopped too; the rollout stops whatever max_failures says, and a later
// call runs in a new evaluator.
func TestMemoryLimitStopsEveryCheck(t *testing.T) {
	var waiting sync.WaitGroup
	var block atomic.Bool
	block.Store(true)
	release := make(chan struct{})
	runner := &fakeRunner{reply: func(ctx context.Context, instance, _ string) (string, string, int, error) {
		if block.Load() && instance != "bomb" {
			waiting.Done()
			select {
			case <-ctx.Done():
				return "", "", 0, ctx.Err()
			case <-release:
			}
		}
		return "", "", 0, nil
	}}
	p := mustLoad(t, `
on_failure = "continue"
def post_activate(ctx):
    if ctx.instance.name == "bomb":
        l = [0]
        while len(l) < 1 << 26:
            l = l + l
    ctx.run("health")
`, Env{Runner: runner, MaxMemory: testMaxMemory, CheckTimeout: time.Hour})

	others := []string{"www-1", "www-2", "www-3"}
	results := make([]CheckResult, len(others))
	var done sync.WaitGroup
	waiting.Add(len(others))
	for i, name := range others {
		done.Go(func() { results[i] = p.PostActivate(context.Background(), Instance{Name: name}) })
	}
	waiting.Wait() // every other check is inside ctx.run
	bomb := p.PostActivate(context.Background(), Instance{Name: "bomb"})
	block.Store(false)
	close(release) // too late for a check the limit stopped
	done.Wait()

	for i, res := range append(results, bomb) {
		if res.OK || !errors.Is(res.Err, ErrMemoryLimit) || !strings.HasPrefix(res.Message, "hive.star") || !strings.Contains(res.Message, "post_activate(): policy exceeded 64 MiB") {
			t.Errorf("check %d: %+v, want stopped by the memory limit", i, res)
		}
	}
	if p.MaxFailures.Total != Unlimited || !p.ShouldStop(Wave{}, 1, 1) {
		t.Errorf("budget %+v: ShouldStop = false after the memory limit, want true", p.MaxFailures)
	}
	if res := p.PostActivate(context.Background(), Instance{Name: "www-4"}); !res.OK {
		t.Errorf("a check after the limit: %+v, want it to pass in a new evaluator", res)
	}
}

// TestTimeLimitInsideOneStep: one comparison that would take centuries is
// a single step, which the interpreter cannot interrupt. The call still
// returns, says it hit the time limit, and nothing keeps computing after
// it (the goroutines it started end). With -v it prints how long after
// its deadline it returned.
func TestTimeLimitInsideOneStep(t *testing.T) {
	before := runtime.NumGoroutine()
	const limit = 100 * time.Millisecond
	p := mustLoad(t, `
def waves(instances):
    a, b = [1], [1]
    for i in range(8):
        a, b = [a] * 100, [b] * 100
    return a == b  # 100**8 comparisons in one step
`, Env{CallTimeout: limit})
	start := time.Now()
	_, err := p.Waves(context.Background(), []Instance{www1})
	elapsed := time.Since(start)
	if !errors.Is(err, ErrTimeLimit) {
		t.Fatalf("err = %v, want the time limit", err)
	}
	if !strings.Contains(err.Error(), "waves(): policy exceeded 100ms (the time limit)") {
		t.Errorf("error %q does not name the function and the limit", err)
	}
	t.Logf("a call stuck inside one step returned %v after its %v deadline", (elapsed - limit).Round(time.Millisecond), limit)

	// Bounded against a hang, not a speed assertion.
	after := runtime.NumGoroutine()
	for deadline := time.Now().Add(time.Minute); after > before && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
		after = runtime.NumGoroutine()
	}
	if after > before {
		buf := make([]byte, 1<<20)
		t.Errorf("%d goroutines before, %d after: the abandoned call still runs:\n%s", before, after, buf[:runtime.Stack(buf, true)])
	}
}

// idleRSS is the peak resident size of an evaluator that loads a policy
// and runs one call of it.
func idleRSS(t testing.TB) uint64 {
	p, err := Load(context.Background(), "hive.star", []byte("def waves(instances):\n    return [instances]\n"), Env{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Waves(context.Background(), []Instance{www1}); err != nil {
		t.Fatal(err)
	}
	p.ev.stop()
	_, rss := lastEvaluator(t, p)
	return rss
}

// lastEvaluator waits until the evaluator that ran p's last call has
// exited and returns the most memory the policy held in it as it measured
// itself (what the Go runtime mapped, touched or not), and its peak
// resident size as the kernel says (which counts the race detector's
// memory under -race).
func lastEvaluator(t testing.TB, p *Policy) (peak, rss uint64) {
	t.Helper()
	p.ev.mu.Lock()
	pr := p.ev.last
	p.ev.mu.Unlock()
	select {
	case <-pr.ended:
	case <-time.After(time.Minute):
		t.Fatal("the evaluator did not exit after passing its memory limit")
	}
	pr.mu.Lock()
	defer pr.mu.Unlock()
	return pr.peak, pr.maxRSS
}

// watchHeld samples what this process's Go runtime holds (the evaluator's
// own measure, see server.watch) every millisecond until the returned
// function is called, which returns the largest growth seen.
func watchHeld() func() uint64 {
	samples := []metrics.Sample{
		{Name: "/memory/classes/total:bytes"},
		{Name: "/memory/classes/heap/released:bytes"},
		{Name: "/memory/classes/heap/free:bytes"},
	}
	held := func() uint64 {
		metrics.Read(samples)
		return samples[0].Value.Uint64() - samples[1].Value.Uint64() - samples[2].Value.Uint64()
	}
	base := held()
	var peak uint64
	stop, stopped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(stopped)
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for {
			if h := held(); h > base {
				peak = max(peak, h-base)
			}
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()
	return func() uint64 {
		close(stop)
		<-stopped
		return peak
	}
}

// TestPolicyOutputBounded: what a policy sends out of its evaluator is
// bounded, so that it cannot move its memory into nix-hive's process: log
// lines and messages are cut, a check keeps a bounded part of its log, and
// ctx.run refuses a command of megabytes.
func TestPolicyOutputBounded(t *testing.T) {
	var mu sync.Mutex
	var logged []int
	runner := &fakeRunner{reply: func(context.Context, string, string) (string, string, int, error) { return "", "", 0, nil }}
	p := mustLoad(t, `
def pre_activate(ctx):
    ctx.run("x" * (2 << 20))
def post_activate(ctx):
    for i in range(100):
        log("y" * (1 << 20))
    fail("z" * (1 << 20))
`, Env{Runner: runner, Log: func(_, msg string) {
		mu.Lock()
		defer mu.Unlock()
		logged = append(logged, len(msg))
	}})

	res := p.PostActivate(context.Background(), www1)
	if res.OK || len(res.Message) > maxText+100 || !strings.HasSuffix(res.Message, "... (1032192 more bytes)") {
		t.Errorf("fail() of 1 MiB: message of %d bytes ending %q, want it cut to %d", len(res.Message), res.Message[max(0, len(res.Message)-40):], maxText)
	}
	kept := 0
	for _, l := range res.Logs {
		kept += len(l)
	}
	if kept > maxLogBytes+100 || res.Logs[len(res.Logs)-1] != "(more lines went to the log only)" {
		t.Errorf("the check kept %d lines, %d bytes of log; want at most %d bytes", len(res.Logs), kept, maxLogBytes)
	}
	mu.Lock()
	if len(logged) != 100 || slices.Max(logged) > maxText+100 {
		t.Errorf("Env.Log got %d lines of at most %d bytes, want 100 cut to %d", len(logged), slices.Max(logged), maxText)
	}
	mu.Unlock()

	res = p.PreActivate(context.Background(), www1)
	if res.OK || !strings.Contains(res.Message, "run: the command is 2097152 bytes, at most 1048576 are allowed") || len(runner.calls) != 0 {
		t.Errorf("ctx.run of 2 MiB: %+v, runner got %d calls; want it refused", res, len(runner.calls))
	}
}
