package deploy

import (
	"context"
	"errors"
	"sync"

	"github.com/nix-hive/nix-hive/eval"
	"github.com/nix-hive/nix-hive/host"
)

// hostLocks are the deploy locks a rollout holds on its targets, with
// what each target ran when its lock was taken (or when it was seen to
// need none), and why a target could not be locked. That one reading of
// a host is what its transfer and its pipeline both go by; the lock is
// apart from either because it outlives them: a transfer takes it, the
// pipeline reads what it found, the executor lets it go.
type hostLocks struct {
	remote host.Remote
	inv    *eval.Inventory
	conn   Connection
	// agent is where a target lacking this nix-hive's agent gets it
	// (transfers.agentSource); nil sends it from here.
	agent func(n string) host.AgentSource

	mu      sync.Mutex
	held    map[string]*host.DeployLock
	carry   map[string]bool       // targets that substituted their closures with the agent
	states  map[string]host.State // what each host ran when its lock was taken
	refused map[string]error
}

func newHostLocks(remote host.Remote, inv *eval.Inventory, conn Connection) *hostLocks {
	return &hostLocks{remote: remote, inv: inv, conn: conn,
		held: map[string]*host.DeployLock{}, carry: map[string]bool{}, states: map[string]host.State{}, refused: map[string]error{}}
}

// lock takes target n's deploy lock; a host another deploy holds is
// refused at once, with who holds it, and its hive.state record is left
// alone.
func (l *hostLocks) lock(ctx context.Context, n string) error {
	var src host.AgentSource
	if l.agent != nil {
		src = l.agent(n)
	}
	dl, hs, err := host.Lock(ctx, l.remote, l.inv.Instances[n], l.conn.Privilege, l.conn.Owner, src)
	if err != nil {
		return l.lockFailed(n, err)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.held[n], l.states[n] = dl, hs
	l.carry[n] = dl.Carried()
	return nil
}

// carried says whether target n substituted its closures with the agent
// when its lock was taken.
func (l *hostLocks) carried(n string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.carry[n]
}

// lockFailed records why target n could not be locked (lockError).
func (l *hostLocks) lockFailed(n string, err error) error {
	status := StatusFailed
	if errors.Is(err, context.Canceled) {
		status = StatusInterrupted // Ctrl-C while it connected
	}
	he := &hostError{step: StepLock, status: status, err: err, untouched: errors.Is(err, host.ErrLocked)}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.refused[n] = he
	return he
}

func (l *hostLocks) lockError(n string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.refused[n]
}

// seen records what target n runs as read without its lock: it needs
// none (seenUpToDate).
func (l *hostLocks) seen(n string, hs host.State) {
	l.mu.Lock()
	l.states[n] = hs
	l.mu.Unlock()
}

// state is what target n ran when its lock was taken, or when it was
// seen to need none; false when neither happened.
func (l *hostLocks) state(n string) (host.State, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	hs, ok := l.states[n]
	return hs, ok
}

// hasGzip says what the host's lock query found (false when unknown).
func (l *hostLocks) hasGzip(n string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.states[n].Gzip
}

// holds says whether this rollout holds target n's deploy lock.
func (l *hostLocks) holds(n string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.held[n] != nil
}

// release lets target n's deploy lock go, if this rollout holds it.
func (l *hostLocks) release(ctx context.Context, n string) {
	l.mu.Lock()
	dl := l.held[n]
	delete(l.held, n)
	l.mu.Unlock()
	dl.Release(ctx)
}

// releaseAll lets every lock still held go at once.
func (l *hostLocks) releaseAll(ctx context.Context) {
	l.mu.Lock()
	held := l.held
	l.held = map[string]*host.DeployLock{}
	l.mu.Unlock()
	var wg sync.WaitGroup
	for _, dl := range held {
		wg.Add(1)
		go func() {
			defer wg.Done()
			dl.Release(ctx)
		}()
	}
	wg.Wait()
}
