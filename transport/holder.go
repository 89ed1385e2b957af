package transport

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/ssh"
)

// Holder is a connection holder that a pool goes through instead of
// connecting to hosts itself (package mux is one: a process that keeps a
// pool's connections, and each host's sftp session, open between
// commands). A command through it costs each host a session but no new
// login.
type Holder interface {
	// Dial returns an instance's connection through the holder. Unless
	// fresh, the holder connects to the instance first (if it has not), so
	// that a connection error comes from Dial, as it would without a
	// holder; a login the holder could not make is a LoginError. Fresh
	// asks for a connection made for the channels opened on it alone, and
	// closed with them (RunFresh). ctx bounds the dial.
	Dial(ctx context.Context, name string, fresh bool) (client *ssh.Client, reached string, err error)
	// Files reads an instance's files over the holder's sftp session with
	// it; ctx bounds opening the reader, within each batch of reads (the
	// holder's dial of the host included).
	Files(ctx context.Context, name string, within time.Duration) (FileReader, error)
	// Reset drops the holder's connection to an instance.
	Reset(name string)
	// Close closes the way to the holder; the holder runs on.
	Close() error
}

// LoginError is a login the host refused, or one no key could be offered
// for. A holder, which cannot ask for passphrases, reports it to a
// command that can, whose pool then logs in itself.
type LoginError struct{ Err error }

func (e LoginError) Error() string { return e.Err.Error() }
func (e LoginError) Unwrap() error { return e.Err }

// holderLink is a pool's way to its holder: the one it was given
// (Config.Holder), or the one it starts when it first connects
// (Config.StartHolder); and the instances the holder could not log in
// to, which the pool dials itself.
type holderLink struct {
	start func() Holder
	once  sync.Once
	h     atomic.Pointer[heldBy]

	mu     sync.Mutex
	direct map[string]bool
}

type heldBy struct{ Holder }

func newHolderLink(cfg Config) *holderLink {
	l := &holderLink{start: cfg.StartHolder, direct: map[string]bool{}}
	if cfg.Holder != nil {
		l.once.Do(func() { l.h.Store(&heldBy{cfg.Holder}) })
	}
	return l
}

// through says whether name's connections go through the holder,
// starting one first if this is the pool's first connection and
// Config.StartHolder says how.
func (l *holderLink) through(name string) bool {
	if l.start != nil {
		l.once.Do(func() {
			if h := l.start(); h != nil { // nil: the starter said why
				l.h.Store(&heldBy{h})
			}
		})
	}
	return l.carries(name)
}

// carries says whether name's connections go through the holder, if the
// pool has one; it starts none.
func (l *holderLink) carries(name string) bool {
	if l.loaded() == nil {
		return false
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return !l.direct[name]
}

// loaded is the holder, nil if the pool has none (yet); it starts none.
func (l *holderLink) loaded() Holder {
	if b := l.h.Load(); b != nil {
		return b.Holder
	}
	return nil
}

// goDirect has the pool dial name itself from now on.
func (l *holderLink) goDirect(name string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.direct[name] = true
}

// close closes the way to the holder; none is started afterwards.
func (l *holderLink) close() {
	l.once.Do(func() {})
	if h := l.loaded(); h != nil {
		h.Close()
	}
}
