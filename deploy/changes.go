package deploy

import (
	"context"
	"errors"
	"maps"
	"slices"
	"sync"

	"github.com/nix-hive/nix-hive/eval"
	"github.com/nix-hive/nix-hive/fanout"
	"github.com/nix-hive/nix-hive/host"
	"github.com/nix-hive/nix-hive/nixcmd"
	"github.com/nix-hive/nix-hive/plan"
	"github.com/nix-hive/nix-hive/state"
)

// SystemChange is what deploying one system changes on its target
// instances, against what they run now.
type SystemChange struct {
	System string `json:"system"`
	Wanted string `json:"wanted"`
	// Unchanged run the wanted system already.
	Unchanged []string `json:"unchanged"`
	// Profiles run the wanted system already and get other profiles
	// beside it (asked hosts only: hive.state does not record them).
	Profiles []string `json:"profiles,omitempty"`
	// From groups the others by the system they run now.
	From []ChangeFrom `json:"from"`
	// Unknown are the instances whose current system is not known, with
	// why (unreachable, no record in hive.state).
	Unknown map[string]string `json:"unknown,omitempty"`
	// Untrusting are the instances that substitute from a store and whose
	// nix.conf does not trust the hive's key (ChangesRequest.PublicKey):
	// they will refuse its closures unless told to trust it.
	Untrusting []string `json:"untrusting,omitempty"`
}

// ChangeFrom is the instances that run one system now, and what the
// wanted system changes for them.
type ChangeFrom struct {
	Path      string       `json:"path"` // "" when they run none
	Instances []string     `json:"instances"`
	Diff      *ClosureDiff `json:"diff,omitempty"`
	Error     string       `json:"error,omitempty"` // why there is no Diff
}

// ChangesRequest is what Changes compares.
type ChangesRequest struct {
	Plan      *plan.Plan
	Inventory *eval.Inventory
	// Remote asks the hosts what they run; nil compares with State
	// (plan --offline).
	Remote   host.Remote
	State    *state.File
	Nix      *nixcmd.Runner
	Parallel int
	// PublicKey, if set, is the hive's: consumers asked what they run are
	// also checked for trusting it (SystemChange.Untrusting).
	PublicKey string
}

// Changes compares every system of the plan with what its targets run:
// read from the hosts in parallel (an unreachable host is reported and
// the rest still compared), or from hive.state without a Remote. Closure
// diffs use this machine's store where it has both systems; a running
// system it lacks is read from one instance that runs it.
func Changes(ctx context.Context, r ChangesRequest) []SystemChange {
	targets := r.Plan.Targets
	running, unknown, states := currentSystems(ctx, r, targets)
	bySystem := map[string]*SystemChange{}
	groups := map[string]map[string][]string{} // system -> running path -> instances
	for _, n := range targets {
		h := r.Plan.Hosts[n]
		sc := bySystem[h.System]
		if sc == nil {
			sc = &SystemChange{System: h.System, Wanted: h.OutPath, Unchanged: []string{}, From: []ChangeFrom{}}
			bySystem[h.System] = sc
			groups[h.System] = map[string][]string{}
		}
		if hs, ok := states[n]; ok && r.PublicKey != "" && h.Source.Kind != plan.SourcePush && h.Source.Kind != plan.SourceLocal &&
			hs.TrustRead && !slices.Contains(hs.Trusted, r.PublicKey) {
			sc.Untrusting = append(sc.Untrusting, n)
		}
		switch p, ok := running[n]; {
		case !ok:
			if sc.Unknown == nil {
				sc.Unknown = map[string]string{}
			}
			sc.Unknown[n] = unknown[n]
		case p == h.OutPath && states[n].Profiles != host.ProfileWords(h.Profiles) && r.Remote != nil:
			sc.Profiles = append(sc.Profiles, n)
		case p == h.OutPath:
			sc.Unchanged = append(sc.Unchanged, n)
		default:
			groups[h.System][p] = append(groups[h.System][p], n)
		}
	}
	out := make([]SystemChange, 0, len(bySystem))
	type job struct{ sys, from int }
	var jobs []job
	for _, s := range slices.Sorted(maps.Keys(bySystem)) {
		sc := bySystem[s]
		for _, p := range slices.Sorted(maps.Keys(groups[s])) {
			sc.From = append(sc.From, ChangeFrom{Path: p, Instances: groups[s][p]})
			jobs = append(jobs, job{len(out), len(sc.From) - 1})
		}
		out = append(out, *sc)
	}
	cl := closures{r: r, local: map[string]*localResult{}}
	fanout.Each(ctx, len(jobs), r.Parallel, func(ctx context.Context, i int) {
		sc := &out[jobs[i].sys]
		cf := &sc.From[jobs[i].from]
		d, err := cl.diff(ctx, cf, sc.Wanted)
		if err != nil {
			cf.Error = err.Error()
			return
		}
		cf.Diff = d
	})
	return out
}

// currentSystems is what each target runs now (absent when unknown, with
// why in unknown), and, when the hosts were asked, what they said.
func currentSystems(ctx context.Context, r ChangesRequest, targets []string) (running, unknown map[string]string, states map[string]host.State) {
	running, unknown, states = map[string]string{}, map[string]string{}, map[string]host.State{}
	if r.Remote == nil {
		for _, n := range targets {
			rec, ok := r.State.Instances[n]
			path, known := recordedRunning(rec)
			switch {
			case !ok || rec.Status == "": // a store's record of closures it received only
				unknown[n] = "no deploy recorded in " + r.State.Path()
			case !known:
				unknown[n] = "last deploy recorded: " + rec.Status + " (" + rec.Goal + ")"
			default:
				running[n] = path
			}
		}
		return running, unknown, states
	}
	rows := Inspect(ctx, r.Remote, r.Inventory, targets, nil, r.Parallel)
	for _, row := range rows {
		if row.Error != "" {
			unknown[row.Instance] = row.Error
			continue
		}
		running[row.Instance] = row.Active
		states[row.Instance] = row.State
	}
	return running, unknown, states
}

// recordedRunning is what an instance runs by its last deploy's record:
// known only when that deploy activated its system, or found it running
// already, and succeeded.
func recordedRunning(rec state.Instance) (string, bool) {
	if (rec.Status != string(StatusOK) && rec.Status != string(StatusUnchanged)) || !host.Goal(rec.Goal).Activates() || rec.OutPath == "" {
		return "", false
	}
	return rec.OutPath, true
}

type localResult struct {
	once sync.Once
	c    Closure
	ok   bool
	err  error
}

// closures reads each closure once, however many groups need it.
type closures struct {
	r     ChangesRequest
	mu    sync.Mutex
	local map[string]*localResult
}

func (c *closures) localClosure(ctx context.Context, path string) (Closure, bool, error) {
	c.mu.Lock()
	res := c.local[path]
	if res == nil {
		res = &localResult{}
		c.local[path] = res
	}
	c.mu.Unlock()
	res.once.Do(func() { res.c, res.ok, res.err = LocalClosure(ctx, c.r.Nix, path) })
	return res.c, res.ok, res.err
}

var errNotBuilt = errors.New("the wanted system is not built on this machine: build it (nix-hive build, or plan --build) to see what changes")

func (c *closures) diff(ctx context.Context, cf *ChangeFrom, wanted string) (*ClosureDiff, error) {
	newC, ok, err := c.localClosure(ctx, wanted)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, errNotBuilt
	}
	if cf.Path == "" {
		return DiffClosures(Closure{}, newC), nil
	}
	oldC, ok, err := c.localClosure(ctx, cf.Path)
	if err != nil {
		return nil, err
	}
	if !ok {
		if c.r.Remote == nil {
			return nil, errors.New("the running system is not in this machine's store (--offline reads no host)")
		}
		// Any instance of the group has it: it runs it.
		if oldC, err = host.Closure(ctx, c.r.Remote, cf.Instances[0], cf.Path); err != nil {
			return nil, err
		}
	}
	return DiffClosures(oldC, newC), nil
}
