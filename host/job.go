package host

import (
	"bytes"
	"compress/gzip"
	"crypto/rand"
	_ "embed"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nix-hive/nix-hive/eval"
)

// jobScript is the activation job (see job.sh); it reaches the host on the
// stdin of startProgram, never on a command line.
//
//go:embed job.sh
var jobScript string

// jobPayload is what the start program reads on stdin: the job script,
// compacted, and gzipped for hosts that have gzip (NixOS always does).
// At a thousand hosts every byte sent per host counts: the script's
// comments are for its readers here, not for the hosts.
func jobPayload(gz bool) string {
	if !gz {
		return compactJob()
	}
	return gzippedJob()
}

var (
	compactJob = sync.OnceValue(func() string { return compact(jobScript) })
	gzippedJob = sync.OnceValue(func() string { return gzipped(compactJob()) })
)

// gzipped is s compressed as well as gzip can: what travels to every host
// is compressed once per run.
func gzipped(s string) string {
	var b bytes.Buffer
	w, _ := gzip.NewWriterLevel(&b, gzip.BestCompression)
	w.Write([]byte(s))
	w.Close()
	return b.String()
}

// waitProgram is shared by the programs that wait for a job: wait ID
// UNTIL BEAT waits until job ID reaches state UNTIL ("activated"; "" for
// none) or ends, printing a "." every BEAT seconds meanwhile so that
// nix-hive notices a connection gone silent, and then the job's state: a
// state line, "gone" (no such job: it never started, or a reboot cleared
// /run) or "lost" (it ended without an outcome), then, unless it ended
// ok, the end of its log. It blocks on the job's phase locks (see job.sh)
// and needs no privileges.
const waitProgram = `wait_job() {
  d=/run/nix-hive/jobs/$1
  [ -d "$d" ] || { echo gone; return 0; }
  s=
  { read -r s <"$d/state"; } 2>/dev/null
  # A job that says "activated" holds its activated lock already (it
  # takes it first), and one that says "done" holds none: a lock
  # waited for costs a process.
  case $s in
  done*) ;;
  activated) [ "$2" = activated ] || wait_lock activated.lock "$3" ;;
  *)
    wait_lock running.lock "$3"
    [ "$2" = activated ] || wait_lock activated.lock "$3"
    ;;
  esac
  s=
  { read -r s <"$d/state"; } 2>/dev/null
  case $s in done*|activated) ;; *) s=lost ;; esac
  printf "%s\n" "$s"
  case $s in "done ok"*|activated) ;; *) tail -n 15 "$d/log" 2>/dev/null ;; esac
}
# wait_lock LOCK BEAT: until the job lets go of LOCK (or dies); a lock
# never taken is not waited for. flock takes the lock on a descriptor
# the shell opened for it alone, and lets go as it exits: one process,
# where flock FILE true is two.
wait_lock() {
  [ -e "$d/$1" ] || return 0
  while :; do
    flock -s -w "$2" 4 4<"$d/$1" 2>/dev/null
    [ $? = 1 ] || return 0
    echo .
  done
}
`

// startProgram ID UNTIL BEAT ENC GOAL TARGET CONFIRM LIMIT CHECKS [SPEC
// [PROFILE...]] stores the job
// script in /run/nix-hive/jobs/ID, starts it detached (a transient
// systemd unit where systemd runs, like nixos-rebuild, else a session of
// its own) and, in the same SSH session, waits for it like waitProgram.
// The script comes on stdin, gzipped when ENC is "gzip", or, when ENC is
// "agent", from the agent that runs this in $NIX_HIVE_JOB (written by the
// shell itself: no process for it).
const startProgram = waitProgram + `set -u
for t in flock setsid timeout mkfifo; do
  command -v $t >/dev/null 2>&1 || { echo "nix-hive: $t is missing on the host (util-linux, coreutils)" >&2; exit 2; }
done
id=$1 until=$2 beat=$3 enc=$4; shift 4
umask 022
b=/run/nix-hive; d=$b/jobs/$id
unpack() {
  case $enc in
  gzip) gzip -dc ;;
  agent) printf '%s' "$NIX_HIVE_JOB" ;;
  *) cat ;;
  esac
}
mkdir -p "$d" && unpack >"$d/job.sh" && mkfifo "$d/started" "$d/confirm" || exit 2
unset NIX_HIVE_JOB
exec 3<>"$d/started"
prune() {
  set -- $b/jobs/*
  [ $# -le 100 ] || (find $b/jobs -mindepth 1 -maxdepth 1 -mtime +7 -exec rm -rf {} + 2>/dev/null &)
}
prune
if [ -d /run/systemd/system ] && command -v systemd-run >/dev/null 2>&1; then
  systemd-run --unit="nix-hive-$id" --collect --quiet --no-ask-password --service-type=exec \
    --setenv=PATH="$PATH" ${LOCALE_ARCHIVE:+--setenv=LOCALE_ARCHIVE="$LOCALE_ARCHIVE"} \
    "$(command -v sh)" "$d/job.sh" "$d" "$@" || exit 2
else
  setsid sh "$d/job.sh" "$d" "$@" </dev/null >/dev/null 2>&1 3>&- &
fi
# Where sh is bash (NixOS), its timed read waits for the job's word with
# no process; elsewhere timeout and a shell do (two).
if [ -n "${BASH_VERSION-}" ]; then read -r -t 30 _ <&3; else timeout 30 sh -c 'read -r _ <&3'; fi ||
  { echo "nix-hive: the activation job did not start; see $d/log" >&2; exit 2; }
exec 3>&-
wait_job "$id" "$until" "$beat"
`

// followProgram ID UNTIL BEAT waits for job ID (see waitProgram).
const followProgram = waitProgram + `wait_job "$@"
`

// confirmProgram ID BEAT confirms an activation awaiting confirmation,
// then waits for the job to end (see waitProgram). The rename races the
// job's own rename at its deadline, and only one wins; a line on the
// job's FIFO then wakes it. The first line says "confirmed" or "late"
// (the job is returning to what ran before).
const confirmProgram = waitProgram + `d=/run/nix-hive/jobs/$1
if mv "$d/awaiting" "$d/confirmed" 2>/dev/null; then
  exec 8<>"$d/confirm" && echo >&8
  exec 8>&-
  echo confirmed
elif [ -e "$d/confirmed" ]; then
  echo confirmed
else
  echo late
fi
wait_job "$1" "" "$2"
`

// markProgram JOB STATUS records on the host how the post-activation
// checks of job JOB ended (ok or failed), where the job recorded its
// activation "activated" (see job.sh): in /nix/var/nix-hive/last, if JOB
// is still the last activation there, and in the record of the
// generation it made. It prints "marked" when it changed them.
const markProgram = `set -u
j=$1 s=$2
case $s in ok|failed) ;; *) echo "nix-hive: mark: the status is ok or failed" >&2; exit 64 ;; esac
r=/nix/var/nix-hive/last g=/nix/var/nix-hive/generations
put() { printf '%s\n' "$2" >"$1.tmp" && mv -f "$1.tmp" "$1"; }
read -r id goal path st <$r 2>/dev/null || exit 0
[ "$id" = "$j" ] && [ "$st" = activated ] || exit 0
for f in $g/*; do
  read -r fs fp fj <"$f" 2>/dev/null && [ "$fj" = "$j" ] && [ "$fs" = activated ] && put "$f" "$s $fp $fj"
done
put $r "$id $goal $path $s" && echo marked
`

// JobState is a job's state line: "running", "activated", "done STATUS
// REASON", or what followProgram says of a job it cannot follow; with
// the job's id once it is known.
type JobState struct {
	ID     string
	Phase  string // running, activated, done, gone, lost
	Status string // for done: ok, failed, rolled-back, rollback-failed, refused
	Reason string
	Log    string // the end of the job's log, for failures
}

func parseJobState(out string) JobState {
	out = skipBeats(out)
	first, rest, _ := strings.Cut(strings.TrimRight(out, "\n"), "\n")
	f := strings.SplitN(strings.TrimSpace(first), " ", 3)
	js := JobState{Phase: f[0], Log: strings.TrimSpace(rest)}
	if len(f) > 1 {
		js.Status = f[1]
	}
	if len(f) > 2 {
		js.Reason = f[2]
	}
	return js
}

func (js JobState) String() string {
	s := strings.TrimSpace(strings.Join([]string{js.Phase, js.Status, js.Reason}, " "))
	if js.Log != "" {
		s += fmt.Sprintf(" (log: %s)", lastLines(js.Log, 3))
	}
	return s
}

// RolledBack says the job returned the host to what ran before it.
func (js JobState) RolledBack() bool { return js.Status == "rolled-back" }

// skipBeats drops the heartbeat lines at the start of out.
func skipBeats(out string) string {
	for strings.HasPrefix(out, ".\n") {
		out = out[2:]
	}
	return out
}

// Err is nil for a job that ended ok, else why it did not.
func (js JobState) Err() error {
	if js.Phase == "done" && js.Status == "ok" {
		return nil
	}
	msg := js.Reason
	if msg == "" {
		msg = js.Phase + " " + js.Status
	}
	if js.Log != "" && !js.RolledBack() {
		msg += " (host log: " + lastLines(js.Log, 3) + ")"
	}
	return errors.New(msg)
}

// Job is an activation job for one host (see job.sh).
type Job struct {
	Goal Goal
	// Target is a store path, Previous (the profile's previous
	// generation) or Restore(id) (what ran before job id).
	Target string
	// Confirm > 0 arms magic rollback: unless confirmed over a new SSH
	// connection within Confirm, the host returns to what ran before.
	Confirm time.Duration
	// Gzip: the host has gzip (State.Gzip), send the script gzipped.
	Gzip bool
	// Checks: post-activation checks follow, so a successful activation
	// is recorded "activated" until they pass (Jobs.Mark).
	Checks bool
	// Specialisation, with a store path Target, activates the system's
	// specialisation/NAME: the profile gets the system, and
	// /run/current-system the specialisation's toplevel.
	Specialisation string
	// Profiles, with a store path Target, are the profiles beside the
	// system one to set and activate once the system is (see job.sh);
	// those nix-hive set earlier that are not among them are removed.
	Profiles []Profile
}

// Profile is a profile beside the system one (see eval.BuiltProfile).
type Profile = eval.BuiltProfile

func word(p Profile) string { return p.Name + ":" + p.User + ":" + p.Path + ":" + p.Activate }

// ProfileWords is how a host records a set of profiles (and a job takes
// them): one word each, in the order given.
func ProfileWords(ps []Profile) string {
	w := make([]string, len(ps))
	for i, p := range ps {
		w[i] = word(p)
	}
	return strings.Join(w, " ")
}

// parseProfiles reads ProfileWords' form back; words of another form are
// left out.
func parseProfiles(s string) []Profile {
	var out []Profile
	for _, w := range strings.Fields(s) {
		f := strings.SplitN(w, ":", 4)
		if len(f) == 4 {
			out = append(out, Profile{Name: f[0], User: f[1], Path: f[2], Activate: f[3]})
		}
	}
	return out
}

// Previous is the Target of a job that switches to the newest earlier
// generation the host records as good (rollback).
const Previous = "previous"

// Restore is the Target of a job that returns the host to what ran
// before job id: the profile generation and the system it recorded.
func Restore(id string) string { return "restore:" + id }

// JobError is a job whose outcome on its host is not known: contact was
// lost, or nix-hive stopped waiting; the job goes on there.
type JobError struct {
	id, host string
	err      error
}

func (e *JobError) Error() string {
	return fmt.Sprintf("activation job %s on %s: %v; it finishes on the host (unconfirmed, it returns to the previous system)", e.id, e.host, e.err)
}
func (e *JobError) Unwrap() error { return e.err }

// newID names a job, or a reboot: its start time, and random bits.
func newID() string {
	b := make([]byte, 6)
	rand.Read(b)
	return time.Now().UTC().Format("20060102T150405") + "-" + hex.EncodeToString(b)
}

// secs is d in whole seconds, rounded up.
func secs(d time.Duration) string {
	return strconv.Itoa(max(int((d+time.Second-1)/time.Second), 0))
}
