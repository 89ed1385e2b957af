package starlark

import (
	"encoding/gob"
	"encoding/json"
	"sync"
	"time"
)

// nix-hive and its policy evaluator (see evaluator.go and server.go) talk
// in gob-encoded frames, nix-hive on the evaluator's stdin, the evaluator
// on its stdout. Every frame of a call carries the call's ID.

type op uint8

const (
	// From nix-hive.
	opLoad   op = iota + 1 // compile and run the file; the first frame
	opCall                 // call Fn with Instances
	opCancel               // stop call ID: Stop says why
	opReply                // the answer to request Seq of call ID

	// From the evaluator.
	opRequest // a builtin of call ID needs the deploy host: Req
	opLog     // log() or print() of call ID said Msg
	opDone    // call ID (or the load) finished: Out
	opExit    // the evaluator exits: its memory passed the limit
)

type frame struct {
	Op  op
	ID  uint64
	Seq uint64

	// opLoad
	File      string
	Src       []byte
	Quiet     bool   // a restart: top-level log() and print() were shown at Load
	MaxMemory uint64 // bytes, for the whole evaluator

	// opLoad, opCall
	Fn        string
	MaxSteps  uint64
	Instances []Instance

	Stop stopKind // opCancel
	Req  *request // opRequest
	Rep  *reply   // opReply
	Msg  string   // opLog
	Out  *outcome // opDone
	Peak uint64   // opExit: the most memory the policy held, in bytes
}

// stopKind is why a call was stopped from outside the policy.
type stopKind uint8

const (
	stopNone   stopKind = iota
	stopTime            // the call's time limit passed
	stopCancel          // the caller's context ended
	stopSteps           // Env.MaxSteps
	stopMemory          // Env.MaxMemory
)

func (k stopKind) String() string {
	return [...]string{"", "time limit", "cancelled", "step limit", "memory limit"}[k]
}

// request is what a builtin asks of the deploy host, which holds the
// Runner, the HTTP client and the clock.
type request struct {
	Op         string // "run", "http_get" or "sleep"
	Cmd        string // run
	URL        string // http_get
	Timeout    time.Duration
	HasTimeout bool // run: timeout= was given; http_get and sleep always have one
}

type reply struct {
	Stdout, Stderr string
	Code           int // run's exit status
	Status         int // http_get
	Body           string
	Err            string // the error the builtin raises; "" for none
}

// outcome is the result of a call (or of loading the file).
type outcome struct {
	// Err is the policy's error, nil when the call succeeded. Its Err
	// field is always nil on the wire: Stop says why a call was stopped.
	Err  *Error
	Stop stopKind

	Settings settings // opLoad
	Selected []int    // select: indices into Instances
	Waves    [][]int  // waves: indices into Instances
	Canary   []bool   // waves: which are canary waves

	// Set by nix-hive, never sent.
	stuck     bool   // the call did not stop within stopGrace and was abandoned
	abandoned bool   // a builtin on the deploy host ignored the cancellation
	crash     string // the evaluator ended without saying why: its last words
}

// settings are what loading the file tells about it.
type settings struct {
	OnFailure                            FailureAction
	MaxFailures                          FailureBudget
	RollbackSucceeded                    bool
	HasSelect, HasWaves, HasPre, HasPost bool
}

// registerWire tells gob the types Instance.Meta may hold besides its
// basic ones. Both sides call it before their first frame (an init
// function could run after the evaluator's init has started serving).
var registerWire = sync.OnceFunc(func() {
	gob.Register(map[string]any(nil))
	gob.Register([]any(nil))
	gob.Register(json.Number(""))
})
