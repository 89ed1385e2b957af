package fanout

import (
	"context"
	"sync"
	"sync/atomic"
)

// DefaultLimit is the bound when a caller gives none.
const DefaultLimit = 16

// Each calls fn(ctx, i) for i in [0, n), starting them in order, with at
// most limit calls running at once (limit <= 0 means DefaultLimit), and
// returns when every started call has returned. Once ctx ends no further
// call starts; Each returns how many started, so a caller can tell which
// items never ran (those from that index on).
func Each(ctx context.Context, n, limit int, fn func(ctx context.Context, i int)) (started int) {
	if limit <= 0 {
		limit = DefaultLimit
	}
	sem := make(chan struct{}, limit)
	var wg sync.WaitGroup
	for i := 0; i < n && ctx.Err() == nil; i++ {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			continue // the loop condition ends it
		}
		started++
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			fn(ctx, i)
		}()
	}
	wg.Wait()
	return started
}

// Until calls fn(i) for i in [0, n), starting them in order, with at most
// limit calls running at once (limit <= 0 means DefaultLimit), until a
// call returns false: no call starts after that, and those running
// finish. It returns when every started call has returned; which ones
// failed, and so which error a caller reports first, is the caller's.
func Until(n, limit int, fn func(i int) (ok bool)) {
	if limit <= 0 {
		limit = DefaultLimit
	}
	sem := make(chan struct{}, limit)
	var (
		wg     sync.WaitGroup
		failed atomic.Bool
	)
	for i := 0; i < n; i++ {
		sem <- struct{}{}
		if failed.Load() {
			break
		}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			if !fn(i) {
				failed.Store(true)
			}
		}()
	}
	wg.Wait()
}
