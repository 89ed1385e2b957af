package deploy

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nix-hive/nix-hive/host"
	"github.com/nix-hive/nix-hive/plan"
	"github.com/nix-hive/nix-hive/state"
)

type stopAfter struct{ n int }

func (s stopAfter) Pre(context.Context, string) (bool, string)  { return true, "" }
func (s stopAfter) Post(context.Context, string) (bool, string) { return true, "" }
func (s stopAfter) ShouldStop(wave, waveFailures, total int) bool {
	return total >= s.n
}
func (s stopAfter) Rollback() bool          { return false }
func (s stopAfter) RollbackSucceeded() bool { return false }

// failPost is a policy whose post-check fails on the hosts it names; it
// stops after the first failure.
type failPost map[string]bool

func (p failPost) Pre(context.Context, string) (bool, string) { return true, "" }
func (p failPost) Post(_ context.Context, n string) (bool, string) {
	if p[n] {
		return false, "unhealthy"
	}
	return true, ""
}
func (p failPost) ShouldStop(wave, waveFailures, total int) bool { return total >= 1 }
func (p failPost) Rollback() bool                                { return false }
func (p failPost) RollbackSucceeded() bool                       { return false }

func TestExecutor(t *testing.T) {
	inv := seedInventory()
	tests := []struct {
		name    string
		targets []string
		waves   [][]string
		fail    map[string]bool
		active  map[string]string
		last    map[string]string // the hosts' /nix/var/nix-hive/last
		policy  Policy
		order   []string
		status  map[string]Status
		copies  int
		marks   []string // checks recorded on the hosts
	}{
		{
			name:    "stores activate before consumers",
			targets: []string{"www-1", "www-2", "portico"},
			order:   []string{"portico", "www-1", "www-2"},
			status:  map[string]Status{"portico": StatusOK, "www-1": StatusOK},
			copies:  1,
		},
		{
			// Nothing is even copied to it: a no-op deploy is quiet and quick.
			name:    "a host already on its system is left alone",
			targets: []string{"storage", "portico"},
			active:  map[string]string{"storage": "/nix/store/s"},
			order:   []string{"portico"},
			status:  map[string]Status{"storage": StatusUnchanged, "portico": StatusOK},
			copies:  1,
		},
		{
			// The store runs its system and so do its consumers: no copy
			// at all, not even to the store.
			name:    "a no-op deploy through a store copies nothing",
			targets: []string{"portico", "www-1", "www-2"},
			active:  map[string]string{"portico": "/nix/store/p", "www-1": "/nix/store/w", "www-2": "/nix/store/w"},
			status:  map[string]Status{"portico": StatusUnchanged, "www-1": StatusUnchanged, "www-2": StatusUnchanged},
			copies:  0,
		},
		{
			// The store is left alone as a target, and still receives what
			// a consumer lacks, once.
			name:    "a store on its system still supplies its consumers",
			targets: []string{"portico", "www-1", "www-2"},
			active:  map[string]string{"portico": "/nix/store/p"},
			order:   []string{"www-1", "www-2"},
			status:  map[string]Status{"portico": StatusUnchanged, "www-1": StatusOK, "www-2": StatusOK},
			copies:  1,
		},
		{
			name:    "a failure does not stop the others without a policy",
			targets: []string{"portico", "storage", "www-1"},
			waves:   [][]string{{"storage"}, {"portico"}, {"www-1"}},
			fail:    map[string]bool{"storage": true},
			order:   []string{"storage", "portico", "www-1"},
			status:  map[string]Status{"storage": StatusFailed, "www-1": StatusOK},
			copies:  2,
		},
		{
			name:    "a policy stop starts nothing further",
			targets: []string{"portico", "storage", "www-1"},
			waves:   [][]string{{"storage"}, {"portico"}, {"www-1"}},
			fail:    map[string]bool{"storage": true},
			policy:  stopAfter{1},
			order:   []string{"storage"},
			status:  map[string]Status{"storage": StatusFailed, "portico": StatusNotStarted, "www-1": StatusNotStarted},
			copies:  2,
		},
		{
			name:    "passed checks are recorded on the host",
			targets: []string{"storage"},
			policy:  failPost{},
			order:   []string{"storage"},
			status:  map[string]Status{"storage": StatusOK},
			copies:  1,
			marks:   []string{"storage ok"},
		},
		{
			// nix-hive was killed during the checks: the host runs the
			// system, and its record says they never finished.
			name:    "checks that never finished run again, without a new activation",
			targets: []string{"storage"},
			active:  map[string]string{"storage": "/nix/store/s"},
			last:    map[string]string{"storage": "J1 switch /nix/store/s activated"},
			policy:  failPost{},
			status:  map[string]Status{"storage": StatusOK},
			marks:   []string{"storage ok"},
		},
		{
			// ... and when they fail now, the policy's rule applies: the
			// canary fails and the next wave never starts.
			name:    "a canary whose rerun checks fail stops the rollout",
			targets: []string{"storage", "portico"},
			waves:   [][]string{{"storage"}, {"portico"}},
			active:  map[string]string{"storage": "/nix/store/s"},
			last:    map[string]string{"storage": "J1 switch /nix/store/s activated"},
			policy:  failPost{"storage": true},
			status:  map[string]Status{"storage": StatusFailed, "portico": StatusNotStarted},
			copies:  1,
			marks:   []string{"storage failed"},
		},
		{
			name:    "a failed check is recorded, and not taken as up to date",
			targets: []string{"storage"},
			active:  map[string]string{"storage": "/nix/store/s"},
			last:    map[string]string{"storage": "J1 switch /nix/store/s failed"},
			policy:  failPost{},
			order:   []string{"storage"},
			status:  map[string]Status{"storage": StatusOK},
			copies:  1,
			marks:   []string{"storage ok"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := plan.Make(inv, tt.targets, seedBuilt, tt.waves)
			if err != nil {
				t.Fatal(err)
			}
			f := newFakeHosts()
			for k, v := range tt.fail {
				f.fail[k] = v
			}
			for k, v := range tt.active {
				f.active[k], f.profile[k] = v, v
			}
			for k, v := range tt.last {
				f.last[k] = v
			}
			r := Execute(context.Background(), p, inv, f, f, Options{Connection: Connection{Parallel: 1}, Policy: tt.policy})
			if strings.Join(f.order, " ") != strings.Join(tt.order, " ") {
				t.Errorf("activations %v, want %v", f.order, tt.order)
			}
			for h, want := range tt.status {
				if got := r.Results[h].Status; got != want {
					t.Errorf("%s: %s, want %s (%s)", h, got, want, r.Results[h].Error)
				}
			}
			if len(f.copies) != tt.copies {
				t.Errorf("copies %v, want %d", f.copies, tt.copies)
			}
			if strings.Join(f.marks, ", ") != strings.Join(tt.marks, ", ") {
				t.Errorf("checks recorded on hosts: %v, want %v", f.marks, tt.marks)
			}
			if _, stops := tt.policy.(stopAfter); (stops || tt.status["portico"] == StatusNotStarted) && r.Stopped == "" {
				t.Errorf("report does not say the rollout stopped")
			}
		})
	}
}

// Ctrl-C while an activation runs: it finishes, nothing else starts.
func TestExecutorInterrupt(t *testing.T) {
	inv := seedInventory()
	p, err := plan.Make(inv, []string{"storage", "portico"}, seedBuilt, nil)
	if err != nil {
		t.Fatal(err)
	}
	f := newFakeHosts()
	f.stalled = make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	events := make(chan Event, 100)
	go func() {
		for e := range events {
			if e.Step == StepActivate && e.Status == EventStart {
				cancel()
				close(f.stalled)
				return
			}
		}
	}()
	r := Execute(ctx, p, inv, f, f, Options{Connection: Connection{Parallel: 1}, Record: Record{Events: func(e Event) {
		select {
		case events <- e:
		default:
		}
	}}})
	if !r.Interrupted {
		t.Error("report not marked interrupted")
	}
	if len(f.order) != 1 {
		t.Fatalf("exactly the running activation should finish: %v", f.order)
	}
	if s := r.Results[f.order[0]].Status; s != StatusOK {
		t.Errorf("the running activation ended %s, want ok", s)
	}
	other := "storage"
	if f.order[0] == "storage" {
		other = "portico"
	}
	if s := r.Results[other].Status; s != StatusNotStarted {
		t.Errorf("%s: %s, want not-started", other, s)
	}
}

type postFails struct{ rollback bool }

func (postFails) Pre(context.Context, string) (bool, string)  { return true, "" }
func (postFails) Post(context.Context, string) (bool, string) { return false, "unhealthy" }
func (postFails) ShouldStop(int, int, int) bool               { return false }
func (p postFails) Rollback() bool                            { return p.rollback }
func (p postFails) RollbackSucceeded() bool                   { return false }

// What each host ends with, and what it runs at the end, for the outcomes
// the host agent can report.
func TestExecutorOutcomes(t *testing.T) {
	inv := seedInventory()
	const old = "/nix/store/old"
	tests := []struct {
		name   string
		opts   Options
		setup  func(f *fakeHosts)
		status Status
		step   Step
		active string // on storage at the end
		err    string
	}{
		{name: "confirmed", opts: Options{Activation: Activation{MagicRollback: true}}, status: StatusOK, step: StepDone, active: "/nix/store/s"},
		{name: "no new connection gets through: rolled back by the host",
			opts:   Options{Activation: Activation{MagicRollback: true, ConfirmTimeout: 50 * time.Millisecond}},
			setup:  func(f *fakeHosts) { f.unconfirmable["storage"] = true },
			status: StatusRolledBack, step: StepActivate, active: old, err: "not confirmed"},
		{name: "failed activation with magic rollback returns to before",
			opts:   Options{Activation: Activation{MagicRollback: true}},
			setup:  func(f *fakeHosts) { f.fail["storage"] = true },
			status: StatusRolledBack, step: StepActivate, active: old, err: "exited 1"},
		{name: "failed activation without magic rollback stays failed",
			setup:  func(f *fakeHosts) { f.fail["storage"] = true },
			status: StatusFailed, step: StepActivate, active: old, err: "exited 1"},
		{name: "failed post-check rolls back to what ran before the deploy",
			opts:   Options{Activation: Activation{MagicRollback: true}, Policy: postFails{rollback: true}},
			status: StatusRolledBack, step: StepRollback, active: old, err: "post-check failed: unhealthy"},
		{name: "failed post-check without rollback",
			opts:   Options{Policy: postFails{}},
			status: StatusFailed, step: StepPostCheck, active: "/nix/store/s", err: "unhealthy"},
		{name: "dry-activate changes nothing",
			opts:   Options{Activation: Activation{Goal: host.GoalDryActivate}},
			status: StatusDryActivated, step: StepDone, active: old},
		{name: "a host another deploy holds is refused at once",
			setup:  func(f *fakeHosts) { f.locks["storage"] = "alice@box (nix-hive pid 7)" },
			status: StatusFailed, step: StepLock, active: old, err: "alice@box (nix-hive pid 7)"},
		{name: "boot after a failed switch runs the boot activation",
			opts: Options{Activation: Activation{Goal: host.GoalBoot}},
			setup: func(f *fakeHosts) {
				f.profile["storage"] = "/nix/store/s" // the failed switch moved the profile
				f.last["storage"] = "J switch /nix/store/s failed"
			},
			status: StatusOK, step: StepDone, active: old},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := plan.Make(inv, []string{"storage"}, seedBuilt, nil)
			if err != nil {
				t.Fatal(err)
			}
			f := newFakeHosts()
			f.active["storage"], f.profile["storage"] = old, old
			if tt.setup != nil {
				tt.setup(f)
			}
			st := newState(t)
			opts := tt.opts
			opts.Record.State = st
			r := Execute(context.Background(), p, inv, f, f, opts)
			res := r.Results["storage"]
			if res.Status != tt.status || res.Step != tt.step || !strings.Contains(res.Error, tt.err) {
				t.Errorf("storage: %s at %s (%q), want %s at %s (%q)", res.Status, res.Step, res.Error, tt.status, tt.step, tt.err)
			}
			if f.active["storage"] != tt.active {
				t.Errorf("storage runs %s, want %s", f.active["storage"], tt.active)
			}
			if r.OK() != tt.status.Succeeded() {
				t.Errorf("report OK = %v with storage %s", r.OK(), res.Status)
			}
			rec, recorded := st.Instance("storage")
			switch {
			case tt.status == StatusDryActivated || tt.step == StepLock:
				if recorded {
					t.Errorf("recorded in hive.state although this deploy changed nothing there: %+v", rec)
				}
			case !recorded || rec.Status != string(tt.status):
				t.Errorf("hive.state: %+v, want status %s", rec, tt.status)
			}
			if tt.step != StepLock && len(f.locks) != 0 {
				t.Errorf("locks left held: %v", f.locks)
			}
		})
	}
}

// A second interrupt stops waiting for a running activation: the host's
// outcome is unknown (the job goes on there), and the report says so.
func TestExecutorAbortLeavesActivationUnknown(t *testing.T) {
	inv := seedInventory()
	p, err := plan.Make(inv, []string{"storage"}, seedBuilt, nil)
	if err != nil {
		t.Fatal(err)
	}
	f := newFakeHosts()
	f.stalled = make(chan struct{})
	defer close(f.stalled)
	ctx, cancel := context.WithCancel(context.Background())
	abort := make(chan struct{})
	var interrupted string
	r := Execute(ctx, p, inv, f, f, Options{Abort: abort, Record: Record{Events: func(e Event) {
		switch {
		case e.Step == StepActivate && e.Status == EventStart:
			cancel() // first Ctrl-C
		case e.Step == StepRollout && e.Status == EventInfo:
			interrupted = e.Message
			close(abort) // second Ctrl-C
		}
	}}})
	if res := r.Results["storage"]; res.Status != StatusUnknown || !strings.Contains(res.Error, "finishes on the host") {
		t.Errorf("storage: %s (%s), want unknown, still running on the host", res.Status, res.Error)
	}
	if !strings.Contains(interrupted, "[storage]") {
		t.Errorf("the interrupt message does not name the running activation: %q", interrupted)
	}
	if u := r.Unknown(); len(u) != 1 || u[0] != "storage" || !r.Interrupted {
		t.Errorf("report: unknown %v interrupted %v", u, r.Interrupted)
	}
}

func newState(t *testing.T) *state.File {
	st, err := state.Load(filepath.Join(t.TempDir(), "hive.state"))
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// Ctrl-C while a store's push hangs: the store and the consumers waiting
// for it end interrupted (not failed), nothing is activated.
func TestExecutorInterruptedStorePush(t *testing.T) {
	inv := seedInventory()
	p, err := plan.Make(inv, []string{"www-1", "www-2"}, seedBuilt, nil)
	if err != nil {
		t.Fatal(err)
	}
	f := newFakeHosts()
	f.hung = map[string]bool{"portico": true}
	f.pushing = make(chan string, 10)
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		for d := range f.pushing {
			if d == "portico" {
				// The push to the store has started and hangs; once www-1
				// holds its lock it goes on to wait for that push, and
				// Ctrl-C comes.
				f.mu.Lock()
				for f.locks["www-1"] == "" {
					f.changed.Wait()
				}
				f.mu.Unlock()
				cancel()
			}
		}
	}()
	r := Execute(ctx, p, inv, f, f, Options{})
	close(f.pushing)
	for _, h := range []string{"www-1", "www-2", "portico"} {
		if s := r.Results[h].Status; s != StatusInterrupted && s != StatusNotStarted {
			t.Errorf("%s: %s (%s), want interrupted or not-started", h, s, r.Results[h].Error)
		}
	}
	if s := r.Results["www-1"].Status; s != StatusInterrupted {
		t.Errorf("www-1 waited for its store's push: %s, want interrupted", s)
	}
	if len(f.order) != 0 {
		t.Errorf("activated %v after Ctrl-C", f.order)
	}
	if !r.Interrupted || r.OK() {
		t.Errorf("report: interrupted %v ok %v", r.Interrupted, r.OK())
	}
}

// Ctrl-C while a later wave's host holds its lock and waits for its
// store's push: no wave starts it, and its result still says its deploy
// was interrupted (its lock was taken and its closure on its way), not
// that nothing happened to it, whatever the timing.
func TestExecutorInterruptedTransferOfALaterWave(t *testing.T) {
	inv := seedInventory()
	p, err := plan.Make(inv, []string{"storage", "www-1"}, seedBuilt, [][]string{{"storage"}, {"www-1"}})
	if err != nil {
		t.Fatal(err)
	}
	f := newFakeHosts()
	f.hung = map[string]bool{"portico": true}
	f.stalled = make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		f.mu.Lock()
		for f.locks["www-1"] == "" || len(f.jobs) == 0 {
			f.changed.Wait()
		}
		f.mu.Unlock()
		// www-1 holds its lock and its store's push hangs; storage's
		// activation (wave 1) has started and waits.
		cancel()
		close(f.stalled)
	}()
	r := Execute(ctx, p, inv, f, f, Options{})
	if s := r.Results["storage"].Status; s != StatusOK {
		t.Errorf("storage, whose activation ran when Ctrl-C came: %s (%s), want ok", s, r.Results["storage"].Error)
	}
	if res := r.Results["www-1"]; res.Status != StatusInterrupted || res.Step != StepSubstitute {
		t.Errorf("www-1, locked and waiting for its closure: %s at %q (%s), want interrupted at %s", res.Status, res.Step, res.Error, StepSubstitute)
	}
	if got := strings.Join(f.order, " "); got != "storage" {
		t.Errorf("activated %q, want storage alone", got)
	}
	if !r.Interrupted || r.OK() {
		t.Errorf("report: interrupted %v ok %v", r.Interrupted, r.OK())
	}
	// Its lock goes: the release closed the lock's input, and the host
	// lets it go without nix-hive waiting (Ctrl-C).
	f.mu.Lock()
	for f.locks["www-1"] != "" {
		f.changed.Wait()
	}
	f.mu.Unlock()
}

// A rollout that reverts as one (Options.RollbackSucceeded): storage
// fails in wave 3, so nothing after it starts, and the hosts this deploy
// changed return to what they ran before in the reverse of how they
// came: wave 2's www-2 first, then wave 1's consumer www-1 before its
// store portico. Each ends rolled back, running what it ran before, and
// the rollout says why it stopped.
func TestExecutorRollbackSucceeded(t *testing.T) {
	inv := seedInventory()
	p, err := plan.Make(inv, []string{"portico", "www-1", "www-2", "storage", "www-3"},
		seedBuilt, [][]string{{"portico", "www-1"}, {"www-2"}, {"storage"}, {"www-3"}})
	if err != nil {
		t.Fatal(err)
	}
	f := newFakeHosts()
	f.fail["storage"] = true
	r := Execute(context.Background(), p, inv, f, f, Options{Connection: Connection{Parallel: 4}, RollbackSucceeded: true})
	if got := strings.Join(f.restores, " "); got != "www-2 www-1 portico" {
		t.Errorf("reverted %q, want www-2, then www-1 before its store portico", got)
	}
	want := map[string]Status{"portico": StatusRolledBack, "www-1": StatusRolledBack, "www-2": StatusRolledBack,
		"storage": StatusFailed, "www-3": StatusNotStarted}
	for h, s := range want {
		res := r.Results[h]
		if res.Status != s {
			t.Errorf("%s: %s (%s), want %s", h, res.Status, res.Error, s)
		}
		if s == StatusRolledBack && (!strings.Contains(res.Error, "reverted with the rollout: storage failed in wave 3") || f.active[h] != "" || res.Step != StepRollback) {
			t.Errorf("%s: %s at %s, active %q; want reverted, running what it ran before", h, res.Error, res.Step, f.active[h])
		}
	}
	if !strings.Contains(r.Stopped, "storage failed in wave 3") || r.OK() {
		t.Errorf("report: stopped %q, ok %v", r.Stopped, r.OK())
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.locks) != 0 {
		t.Errorf("deploy locks left: %v", f.locks)
	}
}
