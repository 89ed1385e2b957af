package deploy

import (
	"context"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
)

// fakeHosts is an in-memory fleet: it answers the executor's remote
// commands by their shape. The lab tests prove the real commands; this
// proves the executor's ordering and bookkeeping quickly.
type fakeHosts struct {
	mu      sync.Mutex
	active  map[string]string
	order   []string // activations, in order
	fail    map[string]bool
	copies  []string
	stalled chan struct{} // when set, activations wait for it
}

func (f *fakeHosts) Run(ctx context.Context, name, cmd string, _ io.Reader, stdout, _ io.Writer) (int, error) {
	switch {
	case cmd == queryCommand:
		f.mu.Lock()
		a := f.active[name]
		f.mu.Unlock()
		fmt.Fprintf(stdout, "%s\nsystem-1-link\n%s\n", a, a)
		return 0, nil
	case strings.Contains(cmd, "switch-to-configuration"):
		if f.stalled != nil {
			<-f.stalled
		}
		f.mu.Lock()
		defer f.mu.Unlock()
		f.order = append(f.order, name)
		if f.fail[name] {
			return 1, nil
		}
		path := strings.Trim(strings.Fields(cmd)[2], "'") // test -x PATH/bin/switch-to-configuration
		f.active[name] = strings.TrimSuffix(path, "/bin/switch-to-configuration")
		return 0, nil
	case strings.Contains(cmd, "nix-store"):
		return 0, nil
	}
	return 127, nil
}

func (f *fakeHosts) Copy(ctx context.Context, dest string, paths []string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.copies = append(f.copies, dest)
	return nil
}

type stopAfter struct{ n int }

func (s stopAfter) Pre(context.Context, string) (bool, string)  { return true, "" }
func (s stopAfter) Post(context.Context, string) (bool, string) { return true, "" }
func (s stopAfter) ShouldStop(wave, waveFailures, total int) bool {
	return total >= s.n
}
func (s stopAfter) Rollback() bool { return false }

func TestExecutor(t *testing.T) {
	inv := seedInventory()
	tests := []struct {
		name    string
		targets []string
		waves   [][]string
		fail    map[string]bool
		active  map[string]string
		policy  Policy
		order   []string
		status  map[string]string
		copies  int
	}{
		{
			name:    "stores activate before consumers",
			targets: []string{"www-1", "www-2", "portico"},
			order:   []string{"portico", "www-1", "www-2"},
			status:  map[string]string{"portico": StatusOK, "www-1": StatusOK},
			copies:  1,
		},
		{
			name:    "a host already on its system is left alone",
			targets: []string{"storage", "portico"},
			active:  map[string]string{"storage": "/nix/store/s"},
			order:   []string{"portico"},
			status:  map[string]string{"storage": StatusUnchanged, "portico": StatusOK},
			copies:  2,
		},
		{
			name:    "a failure does not stop the others without a policy",
			targets: []string{"portico", "storage", "www-1"},
			waves:   [][]string{{"storage"}, {"portico"}, {"www-1"}},
			fail:    map[string]bool{"storage": true},
			order:   []string{"storage", "portico", "www-1"},
			status:  map[string]string{"storage": StatusFailed, "www-1": StatusOK},
			copies:  2,
		},
		{
			name:    "a policy stop starts nothing further",
			targets: []string{"portico", "storage", "www-1"},
			waves:   [][]string{{"storage"}, {"portico"}, {"www-1"}},
			fail:    map[string]bool{"storage": true},
			policy:  stopAfter{1},
			order:   []string{"storage"},
			status:  map[string]string{"storage": StatusFailed, "portico": StatusNotStarted, "www-1": StatusNotStarted},
			copies:  2,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			plan, err := Make(inv, tt.targets, seedBuilt, tt.waves)
			if err != nil {
				t.Fatal(err)
			}
			f := &fakeHosts{active: map[string]string{}, fail: tt.fail}
			for k, v := range tt.active {
				f.active[k] = v
			}
			r := Execute(context.Background(), plan, inv, f, f, Options{Parallel: 1, Policy: tt.policy})
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
			if tt.policy != nil && r.Stopped == "" {
				t.Errorf("report does not say the rollout stopped")
			}
		})
	}
}

// Ctrl-C while an activation runs: it finishes, nothing else starts.
func TestExecutorInterrupt(t *testing.T) {
	inv := seedInventory()
	plan, err := Make(inv, []string{"storage", "portico"}, seedBuilt, nil)
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeHosts{active: map[string]string{}, stalled: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	events := make(chan Event, 100)
	go func() {
		for e := range events {
			if e.Step == StepActivate && e.Status == "start" {
				cancel()
				close(f.stalled)
				return
			}
		}
	}()
	r := Execute(ctx, plan, inv, f, f, Options{Parallel: 1, Events: func(e Event) {
		select {
		case events <- e:
		default:
		}
	}})
	if !r.Interrupted {
		t.Error("report not marked interrupted")
	}
	if len(f.order) != 1 || r.Results[f.order[0]].Status != StatusOK {
		t.Errorf("the running activation should finish ok, alone: %v", f.order)
	}
	other := "storage"
	if f.order[0] == "storage" {
		other = "portico"
	}
	if s := r.Results[other].Status; s != StatusNotStarted {
		t.Errorf("%s: %s, want not-started", other, s)
	}
}
