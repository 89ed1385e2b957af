package starlark

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"
)

// BenchmarkCanaryWaves plans the example policy's waves for a large fleet
// and reports the cost per instance relative to a 20-instance fleet
// measured in the same run (ratio near 1: planning scales linearly).
func BenchmarkCanaryWaves(b *testing.B) {
	p, err := Load(context.Background(), "testdata/policy/canary/policy.star", nil, Env{})
	if err != nil {
		b.Fatal(err)
	}
	fleetOf := func(n int) []Instance {
		in := make([]Instance, n)
		for i := range in {
			in[i] = Instance{Name: fmt.Sprintf("www-%05d", i), Tags: []string{"web"}, Meta: map[string]any{"rack": "a"}}
		}
		return in
	}
	perInstance := func(in []Instance, rounds int) time.Duration {
		start := time.Now()
		for range rounds {
			if _, err := p.Waves(context.Background(), in); err != nil {
				b.Fatal(err)
			}
		}
		return time.Since(start) / time.Duration(rounds*len(in))
	}
	small, large := fleetOf(20), fleetOf(2000)
	base := perInstance(small, 200)
	b.ResetTimer()
	for b.Loop() {
		if _, err := p.Waves(context.Background(), large); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(perInstance(large, 5))/float64(base), "per-instance-ratio-2000/20")
}

// BenchmarkHostilePolicy runs a waves() that doubles a list, under the
// default memory limit, and reports the most the policy held (the
// evaluator's peak resident size less an idle evaluator's; the goal is
// the documented bound, under twice the limit). Every call starts a new
// evaluator: the one before exited.
func BenchmarkHostilePolicy(b *testing.B) {
	src := "def waves(instances):\n    l = [0]\n    while True:\n        l = l + l\n"
	p, err := Load(context.Background(), "hive.star", []byte(src), Env{})
	if err != nil {
		b.Fatal(err)
	}
	idle := idleRSS(b)
	var peak uint64
	for b.Loop() {
		if _, err := p.Waves(context.Background(), []Instance{www1}); !errors.Is(err, ErrMemoryLimit) {
			b.Fatalf("err = %v, want ErrMemoryLimit", err)
		}
		_, rss := lastEvaluator(b, p)
		peak = max(peak, rss-min(idle, rss))
	}
	b.ReportMetric(float64(peak)/(1<<20), "peak-MiB")
	b.ReportMetric(float64(DefaultMaxMemory)/(1<<20), "limit-MiB")
}

// BenchmarkStopInsideOneStep reports how long after its time limit a call
// stuck inside one step (a comparison that would take centuries) returns.
func BenchmarkStopInsideOneStep(b *testing.B) {
	const limit = 100 * time.Millisecond
	src := `
def select(instances):
    return instances
def waves(instances):
    a, b = [1], [1]
    for i in range(8):
        a, b = [a] * 100, [b] * 100
    return a == b
`
	p, err := Load(context.Background(), "hive.star", []byte(src), Env{CallTimeout: limit})
	if err != nil {
		b.Fatal(err)
	}
	in := []Instance{www1}
	var past time.Duration
	for b.Loop() {
		// A new evaluator for each call (the last one was killed), started
		// before the call timed.
		if _, err := p.Select(context.Background(), in); err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		if _, err := p.Waves(context.Background(), in); !errors.Is(err, ErrTimeLimit) {
			b.Fatalf("err = %v, want ErrTimeLimit", err)
		}
		past += time.Since(start) - limit
	}
	b.ReportMetric(float64(past.Milliseconds())/float64(b.N), "ms-past-deadline")
}

// BenchmarkCheck is one post_activate that runs a command and passes: what
// running a check in the evaluator costs nix-hive's caller.
func BenchmarkCheck(b *testing.B) {
	runner := &fakeRunner{reply: func(context.Context, string, string) (string, string, int, error) { return "ok\n", "", 0, nil }}
	p, err := Load(context.Background(), "hive.star", []byte("def post_activate(ctx):\n    return ctx.run('true').code == 0\n"), Env{Runner: runner})
	if err != nil {
		b.Fatal(err)
	}
	defer p.ev.stop()
	for b.Loop() {
		if res := p.PostActivate(context.Background(), www1); !res.OK {
			b.Fatal(res.Message)
		}
	}
}
