package deploy

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Step is a stage of a host's pipeline, in the order a host goes through
// them; events and results name the step they concern.
type Step string

const (
	StepLock       Step = "lock"
	StepPush       Step = "push"
	StepSubstitute Step = "substitute"
	StepPreCheck   Step = "pre-check"
	StepKeys       Step = "keys"
	StepActivate   Step = "activate"
	StepConfirm    Step = "confirm"
	StepPostCheck  Step = "post-check"
	StepRollback   Step = "rollback"
	StepReboot     Step = "reboot"
	StepDone       Step = "done"
	// StepFinished events carry a host's final status in Result; exactly
	// one per host that got that far.
	StepFinished Step = "finished"
	// Events about the whole rollout rather than a host.
	StepRollout Step = "rollout"
	StepState   Step = "state"
)

// Unchanged is the message of the StepDone event of a host that already
// ran what the deploy would leave it running.
const Unchanged = "unchanged: already active"

// Status is how a host ended.
type Status string

const (
	StatusOK        Status = "ok"
	StatusUnchanged Status = "unchanged"
	// StatusDryActivated: switch-to-configuration dry-activate ran; the
	// host runs what it ran before, and hive.state is not updated.
	StatusDryActivated Status = "dry-activated"
	StatusStored       Status = "stored" // a store-only host that received closures
	StatusFailed       Status = "failed"
	StatusSkipped      Status = "skipped"
	StatusNotStarted   Status = "not-started"
	// StatusRolledBack: the host returned to what ran before this deploy
	// (a failed activation, no confirmation, or a failed post-check).
	StatusRolledBack Status = "rolled-back"
	// StatusInterrupted: Ctrl-C stopped the host's transfer; nothing was
	// activated.
	StatusInterrupted Status = "interrupted"
	// StatusUnknown: nix-hive lost track of an activation that is (or
	// was) running on the host: contact lost, or it stopped waiting.
	StatusUnknown Status = "unknown"
)

// Succeeded reports whether a host that ended with s is as the deploy
// wanted it.
func (s Status) Succeeded() bool {
	switch s {
	case StatusOK, StatusUnchanged, StatusDryActivated, StatusStored:
		return true
	}
	return false
}

// EventStatus is what an event says about its step.
type EventStatus string

const (
	EventStart   EventStatus = "start"
	EventOK      EventStatus = "ok"
	EventFailed  EventStatus = "failed"
	EventSkipped EventStatus = "skipped"
	EventInfo    EventStatus = "info"
)

// Event is one thing that happened to one host (or, without Instance, to
// the rollout).
type Event struct {
	Time     time.Time   `json:"time"`
	Instance string      `json:"instance"`
	Wave     int         `json:"wave"`
	Step     Step        `json:"step"`
	Status   EventStatus `json:"status"`
	// Result is the host's final status, on StepFinished events.
	Result  Status `json:"result,omitempty"`
	Message string `json:"message,omitempty"`
}

// hostError ends a host's pipeline: the step it stopped at, how the host
// ends, and why. Steps return one (or nil) and settle turns it into the
// host's Result, in one place.
type hostError struct {
	step   Step
	status Status
	err    error
	// untouched outcomes leave hive.state's record of the host as it was:
	// this run changed nothing there (another deploy holds the host).
	untouched bool
}

func (e *hostError) Error() string { return e.err.Error() }
func (e *hostError) Unwrap() error { return e.err }

// failed ends a host at step; a cancelled context means Ctrl-C stopped it.
func failed(step Step, err error) error {
	var he *hostError
	if errors.As(err, &he) {
		return err
	}
	status := StatusFailed
	if errors.Is(err, context.Canceled) {
		status = StatusInterrupted
	}
	return &hostError{step: step, status: status, err: err}
}

func failedf(step Step, format string, args ...any) error {
	return failed(step, fmt.Errorf(format, args...))
}

func skipped(step Step, msg string) error {
	return &hostError{step: step, status: StatusSkipped, err: errors.New(msg)}
}

func rolledBack(step Step, err error) error {
	return &hostError{step: step, status: StatusRolledBack, err: err}
}

func unknown(step Step, err error) error {
	return &hostError{step: step, status: StatusUnknown, err: err}
}

// outcome is the status, step and message a host ends with after err (nil
// meaning success with ok).
func outcome(ok Status, err error) (Status, Step, string, bool) {
	if err == nil {
		return ok, StepDone, "", false
	}
	var he *hostError
	if errors.As(err, &he) {
		return he.status, he.step, he.err.Error(), he.untouched
	}
	return StatusFailed, "", err.Error(), false
}

// cause is what a hostError says went wrong, without its step and status.
func cause(err error) error {
	var he *hostError
	if errors.As(err, &he) {
		return he.err
	}
	return err
}
