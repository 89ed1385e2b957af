package starlark

import (
	"context"
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
