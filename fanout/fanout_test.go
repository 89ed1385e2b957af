package fanout

import (
	"context"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
)

func TestEachBoundsAndCoversEveryItem(t *testing.T) {
	for _, tt := range []struct{ n, limit int }{{0, 4}, {1, 4}, {10, 3}, {50, 0}, {5, 50}} {
		var running, peak atomic.Int32
		seen := make([]atomic.Int32, tt.n)
		started := Each(context.Background(), tt.n, tt.limit, func(_ context.Context, i int) {
			r := running.Add(1)
			for {
				p := peak.Load()
				if r <= p || peak.CompareAndSwap(p, r) {
					break
				}
			}
			seen[i].Add(1)
			running.Add(-1)
		})
		limit := tt.limit
		if limit <= 0 {
			limit = DefaultLimit
		}
		if started != tt.n {
			t.Errorf("n=%d: started %d", tt.n, started)
		}
		if int(peak.Load()) > limit {
			t.Errorf("n=%d limit=%d: %d ran at once", tt.n, tt.limit, peak.Load())
		}
		for i := range seen {
			if seen[i].Load() != 1 {
				t.Errorf("n=%d: item %d ran %d times", tt.n, i, seen[i].Load())
			}
		}
	}
}

// Once ctx ends, nothing new starts, and Each still waits for what runs.
func TestEachStopsStartingWhenCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	release := make(chan struct{})
	var mu sync.Mutex
	var ran []int
	done := make(chan int)
	go func() {
		done <- Each(ctx, 10, 2, func(_ context.Context, i int) {
			mu.Lock()
			ran = append(ran, i)
			n := len(ran)
			mu.Unlock()
			if n == 2 {
				cancel() // both slots are busy: item 2 waits for one
			}
			<-release
		})
	}()
	<-ctx.Done() // two calls run and hold both slots
	select {
	case <-done:
		t.Fatal("Each returned while calls were running")
	default:
	}
	close(release)
	if started := <-done; started != 2 {
		t.Errorf("started %d, want 2", started)
	}
	sort.Ints(ran) // started in order; they may run in any
	if len(ran) != 2 || ran[0] != 0 || ran[1] != 1 {
		t.Errorf("ran %v, want [0 1]", ran)
	}
}

func TestUntilStopsStartingAfterAFailure(t *testing.T) {
	for _, tt := range []struct {
		name        string
		n, limit    int
		fail        int // index that fails, -1 none
		wantStarted int
	}{
		{"none fails", 20, 3, -1, 20},
		{"one at a time", 20, 1, 5, 6},
		{"the first fails", 10, 1, 0, 1},
		{"nothing", 0, 4, -1, 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var running, peak, started atomic.Int32
			Until(tt.n, tt.limit, func(i int) bool {
				started.Add(1)
				r := running.Add(1)
				for p := peak.Load(); r > p && !peak.CompareAndSwap(p, r); p = peak.Load() {
				}
				running.Add(-1)
				return i != tt.fail
			})
			if int(started.Load()) != tt.wantStarted {
				t.Errorf("started %d, want %d", started.Load(), tt.wantStarted)
			}
			if int(peak.Load()) > max(tt.limit, 1) {
				t.Errorf("%d ran at once, limit %d", peak.Load(), tt.limit)
			}
		})
	}
}
