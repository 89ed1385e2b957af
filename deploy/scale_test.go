package deploy

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nix-hive/nix-hive/eval"
	"github.com/nix-hive/nix-hive/plan"
)

// treeInventory is a store tree: one region store, racks substituting from
// it, and consumers spread over the racks.
func treeInventory(racks, consumers int) *eval.Inventory {
	inv := &eval.Inventory{Instances: map[string]*eval.Instance{}}
	add := func(name, system, store string) {
		inv.Instances[name] = &eval.Instance{Name: name, System: system, Store: store, User: "root", Port: 22, Host: name}
	}
	add("region", "store", "")
	for r := range racks {
		add(fmt.Sprintf("rack-%d", r), "store", "region")
	}
	for c := range consumers {
		add(fmt.Sprintf("node-%d", c), "node", fmt.Sprintf("rack-%d", c%racks))
	}
	return inv
}

var treeBuilt = map[string]eval.Built{"store": {OutPath: "/nix/store/s"}, "node": {OutPath: "/nix/store/n"}}

// planAll plans a deploy of every instance of inv.
func planAll(tb testing.TB, inv *eval.Inventory, built map[string]eval.Built) *plan.Plan {
	tb.Helper()
	targets, err := inv.Select(nil)
	if err != nil {
		tb.Fatal(err)
	}
	p, err := plan.Make(inv, targets, built, nil)
	if err != nil {
		tb.Fatal(err)
	}
	return p
}

// deployTree plans and executes a deploy of the whole tree on fake hosts
// and returns how long the nix-hive side took.
func deployTree(tb testing.TB, consumers int) time.Duration {
	inv := treeInventory(4, consumers)
	start := time.Now()
	p := planAll(tb, inv, treeBuilt)
	f := newFakeHosts()
	r := Execute(context.Background(), p, inv, f, f, Options{Connection: Connection{Parallel: 16}})
	took := time.Since(start)
	if !r.OK() {
		tb.Fatalf("deploy of %d consumers failed", consumers)
	}
	if len(f.copies) != 1 {
		tb.Fatalf("copies from the deploy host: %v, want only the region store", f.copies)
	}
	return took
}

// BenchmarkTreeDeployScaling measures nix-hive's own cost per host (plan,
// executor, events, bookkeeping; the hosts are in-memory fakes, so every
// microsecond is nix-hive's) at 100 and at 1,000 consumers in one run, and
// reports the ratio: 1.0 is linear growth, more means a cost per host that
// grows with the fleet.
//
//	go test ./deploy -run '^$' -bench TreeDeployScaling -benchtime 3x
func BenchmarkTreeDeployScaling(b *testing.B) {
	var small, large time.Duration
	for range b.N {
		small += deployTree(b, 100)
		large += deployTree(b, 1000)
	}
	perSmall := small.Seconds() / float64(b.N*100)
	perLarge := large.Seconds() / float64(b.N*1000)
	b.ReportMetric(perSmall*1e6, "µs/host@100")
	b.ReportMetric(perLarge*1e6, "µs/host@1000")
	b.ReportMetric(perLarge/perSmall, "ratio")
}

// The tree deploys at 1,000 consumers with one copy from the deploy host;
// the benchmark above measures how its cost grows.
func TestTreeDeployOneUpload(t *testing.T) {
	deployTree(t, 1000)
}

// However high --parallel, at most storeConcurrency consumers substitute
// from one store at once (sshd's MaxStartups would drop more); the rest
// queue, saying so, and then all finish.
func TestSubstitutionsPerStoreAreBounded(t *testing.T) {
	inv := treeInventory(1, 40)
	p := planAll(t, inv, treeBuilt)
	f := newFakeHosts()
	f.substGate = map[string]bool{}
	for n := range inv.Instances {
		if strings.HasPrefix(n, "node-") {
			f.substGate[n] = true
		}
	}
	f.release = make(chan struct{})
	var mu sync.Mutex
	queued := 0
	cond := sync.NewCond(&mu)
	events := func(ev Event) {
		if ev.Step == StepSubstitute && ev.Status == EventInfo && strings.HasPrefix(ev.Message, "queued") {
			mu.Lock()
			queued++
			cond.Broadcast()
			mu.Unlock()
		}
	}
	done := make(chan *Report)
	const parallel = 32
	go func() {
		done <- Execute(context.Background(), p, inv, f, f, Options{Connection: Connection{Parallel: parallel}, Record: Record{Events: events}})
	}()
	// Every worker is busy: storeConcurrency substituting, the others
	// queued (the region and the rack take two workers' turns first and
	// are done by then).
	// A bound against a hang (substitutions that never queue), not a
	// speed assertion.
	hung := false
	guard := time.AfterFunc(2*time.Minute, func() { mu.Lock(); hung = true; cond.Broadcast(); mu.Unlock() })
	defer guard.Stop()
	mu.Lock()
	for queued < parallel-storeConcurrency && !hung {
		cond.Wait()
	}
	mu.Unlock()
	if hung {
		f.mu.Lock()
		t.Fatalf("only %d substitutions queued; %d in flight", queued, f.substituting)
	}
	// The slot holders have all reached the host (a slot is taken just
	// before the command starts).
	f.mu.Lock()
	for f.substituting < storeConcurrency {
		f.changed.Wait()
	}
	inFlight := f.substituting
	f.mu.Unlock()
	close(f.release)
	r := <-done
	if !r.OK() {
		t.Fatalf("deploy failed: %+v", r)
	}
	if inFlight != storeConcurrency || f.most > storeConcurrency {
		t.Errorf("%d substitutions from the rack in flight with %d queued (at most %d at once); want %d", inFlight, queued, f.most, storeConcurrency)
	}
}

func TestAutoParallel(t *testing.T) {
	planOf := func(inv *eval.Inventory, built map[string]eval.Built) *plan.Plan { return planAll(t, inv, built) }
	for _, tt := range []struct {
		name string
		plan *plan.Plan
		want int
	}{
		{"seed: one store and one cache", planOf(seedInventory(), seedBuilt), 16},
		{"4 racks behind a region", planOf(treeInventory(4, 1000), treeBuilt), 40},
		{"40 racks", planOf(treeInventory(40, 1000), treeBuilt), 256},
	} {
		if got := AutoParallel(tt.plan); got != tt.want {
			t.Errorf("%s: AutoParallel = %d; want %d", tt.name, got, tt.want)
		}
	}
}
