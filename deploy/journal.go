package deploy

import (
	"sync"
	"time"

	"github.com/nix-hive/nix-hive/plan"
)

// journal is a rollout's account as it happens: each host's Result and
// the Events that tell of it. Transfers, checks and the host pipelines
// all write to it while the executor decides the outcomes; it is apart
// so that they report without reaching into the executor's waves and
// hive.state.
type journal struct {
	plan   *plan.Plan
	events func(Event) // Record.Events; nil: nobody listens

	mu  sync.Mutex
	res map[string]*Result
}

func (j *journal) result(n string) Result {
	j.mu.Lock()
	defer j.mu.Unlock()
	return *j.res[n]
}

func (j *journal) update(n string, fn func(r *Result)) {
	j.mu.Lock()
	fn(j.res[n])
	j.mu.Unlock()
}

func (j *journal) event(ev Event) {
	if ev.Time.IsZero() {
		ev.Time = time.Now()
	}
	if j.events != nil {
		j.events(ev)
	}
}

func (j *journal) step(n string, step Step, status EventStatus, msg string) {
	wave := 0
	if h := j.plan.Hosts[n]; h != nil && h.Target {
		wave = h.Wave + 1
	}
	j.event(Event{Instance: n, Wave: wave, Step: step, Status: status, Message: msg})
}
