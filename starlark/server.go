package starlark

import (
	"bufio"
	"encoding/gob"
	"io"
	"os"
	"runtime/debug"
	"runtime/metrics"
	"sync"
	"time"
)

// The policy evaluator is the program that imports this package (nix-hive,
// or a test binary) started again by nix-hive with evaluatorArg0 as its
// argv[0] and evaluatorEnv set; this package's init then serves policy
// calls on stdin and stdout and exits, before main runs. See evaluator.go
// for why policies run in a process of their own.
const (
	evaluatorEnv  = "NIX_HIVE_POLICY_EVALUATOR"
	evaluatorArg0 = "nix-hive-policy-evaluator"
)

// exitMemory is the evaluator's exit status when the policy's memory
// passed the limit.
const exitMemory = 3

const (
	// watchInterval is how often the evaluator reads its memory. A single
	// Starlark step (l + l, "x" * n, sorted) cannot be interrupted, so
	// this, not the step, bounds how far past the limit a policy gets.
	watchInterval = time.Millisecond
	// memoryGrace is how long calls stopped by the memory limit get to
	// unwind and say where they were before the evaluator exits, as long
	// as the policy holds less than a quarter more than the limit: past
	// that, a step is still taking memory and the evaluator exits at once.
	memoryGrace = 20 * time.Millisecond
)

func init() {
	if len(os.Args) != 1 || os.Args[0] != evaluatorArg0 || os.Getenv(evaluatorEnv) != "1" {
		return
	}
	os.Unsetenv(evaluatorEnv)
	os.Exit(serve(os.Stdin, os.Stdout))
}

// server runs the policy calls nix-hive sends, each on its own goroutine.
type server struct {
	wmu sync.Mutex
	enc *gob.Encoder

	file   string
	prog   *program      // the loaded file; nil if loading failed
	loaded chan struct{} // closed when loading ended

	mu      sync.Mutex
	calls   map[uint64]*call // running calls, until their outcome is sent
	tripped bool             // the memory limit passed: calls are refused
}

// serve answers frames from r on w until r ends (nix-hive closed the pipe
// or exited) and returns the exit status.
func serve(r io.Reader, w io.Writer) int {
	registerWire()
	s := &server{enc: gob.NewEncoder(w), loaded: make(chan struct{}), calls: map[uint64]*call{}}
	dec := gob.NewDecoder(bufio.NewReader(r))
	for {
		var f frame
		if err := dec.Decode(&f); err != nil {
			return 0
		}
		switch f.Op {
		case opLoad:
			s.file = f.File
			go s.watch(f.MaxMemory)
			s.start(f)
		case opCall:
			s.start(f)
		case opCancel:
			s.mu.Lock()
			c := s.calls[f.ID]
			s.mu.Unlock()
			if c != nil {
				c.stop(f.Stop)
			}
		case opReply:
			s.mu.Lock()
			c := s.calls[f.ID]
			s.mu.Unlock()
			if c != nil {
				c.deliver(f.Seq, f.Rep)
			}
		}
	}
}

func (s *server) send(f frame) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	_ = s.enc.Encode(f) // nix-hive is gone if this fails; reading stdin ends too
}

// start registers the call of f, so that a cancel right behind it finds
// it, and runs it on a goroutine of its own.
func (s *server) start(f frame) {
	c := newCall(s, f)
	s.mu.Lock()
	if s.tripped {
		s.mu.Unlock()
		// Not on the reading goroutine, which must never block: it is
		// how nix-hive stops calls.
		go s.send(frame{Op: opDone, ID: f.ID, Out: &outcome{Err: &Error{File: s.file, Func: f.Fn}, Stop: stopMemory}})
		return
	}
	s.calls[f.ID] = c
	s.mu.Unlock()
	go func() {
		out := s.run(c, f)
		s.send(frame{Op: opDone, ID: f.ID, Out: out})
		s.mu.Lock()
		delete(s.calls, f.ID)
		s.mu.Unlock()
	}()
}

func (s *server) run(c *call, f frame) *outcome {
	if f.Op == opLoad {
		prog, out := compile(c, f.File, f.Src)
		s.prog = prog
		close(s.loaded)
		return out
	}
	<-s.loaded
	if s.prog == nil {
		return &outcome{Err: &Error{File: s.file, Func: f.Fn, Msg: "the policy file did not load"}}
	}
	c.entries = s.prog.entries
	switch f.Fn {
	case "select":
		return s.prog.selectIn(c, f.Instances)
	case "waves":
		return s.prog.wavesIn(c, f.Instances)
	case "pre_activate", "post_activate":
		if len(f.Instances) == 1 {
			return s.prog.check(c, f.Fn, f.Instances[0])
		}
	}
	return &outcome{Err: &Error{File: s.file, Func: f.Fn, Msg: "no such policy call"}}
}

// watch reads the evaluator's memory every watchInterval and, once the
// policy holds more than limit bytes beyond what the evaluator held when
// it started, stops every call running and exits.
//
// The policy's memory is what the Go runtime holds from the system, less
// the free pages it keeps: the policy's values (live, or dead and not yet
// collected), its stacks and the runtime's bookkeeping for them. A large
// allocation counts as soon as it is made, before its pages are touched,
// so one step asking for gigabytes is caught at once (unless a stop of
// the world holds this goroutine up; nix-hive's proc.watch is there for
// that).
func (s *server) watch(limit uint64) {
	samples := []metrics.Sample{
		{Name: "/memory/classes/total:bytes"},
		{Name: "/memory/classes/heap/released:bytes"},
		{Name: "/memory/classes/heap/free:bytes"},
	}
	held := func() uint64 {
		metrics.Read(samples)
		return samples[0].Value.Uint64() - samples[1].Value.Uint64() - samples[2].Value.Uint64()
	}
	base := held()
	// Collect garbage before it counts against the limit, and let no
	// stack (deep values' repr, comparison) grow past the limit either.
	debug.SetMemoryLimit(int64(base + limit/4*3))
	debug.SetMaxStack(int(min(max(limit, 16<<20), 1<<30)))
	var peak uint64
	used := func() uint64 {
		u := held()
		if u < base {
			return 0
		}
		peak = max(peak, u-base)
		return u - base
	}
	tick := time.NewTicker(watchInterval)
	for range tick.C {
		if used() > limit {
			break
		}
	}
	tick.Stop()

	s.mu.Lock()
	s.tripped = true
	for _, c := range s.calls {
		c.stop(stopMemory)
	}
	s.mu.Unlock()
	for deadline := time.Now().Add(memoryGrace); time.Now().Before(deadline) && used() <= limit+limit/4; {
		s.mu.Lock()
		n := len(s.calls)
		s.mu.Unlock()
		if n == 0 {
			break
		}
		time.Sleep(watchInterval)
	}
	used()
	// Say why, unless nix-hive is not reading (a slow Env.Log): the exit
	// status says it too.
	said := make(chan struct{})
	go func() {
		s.send(frame{Op: opExit, Peak: peak})
		close(said)
	}()
	select {
	case <-said:
	case <-time.After(memoryGrace):
	}
	os.Exit(exitMemory)
}
