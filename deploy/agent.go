package deploy

import (
	_ "embed"
	"fmt"
	"strconv"
	"strings"

	"github.com/nix-hive/nix-hive/shell"
)

// Remote commands are built here and only here. Each is a fixed shell
// program run as `sh -c PROGRAM nix-hive ARG...`: instance names, paths,
// keys and owners arrive as quoted arguments and are never pasted into
// the program.

const profile = "/nix/var/nix/profiles/system"

// jobScript is the activation job (see job.sh); it reaches the host on the
// stdin of startProgram, never on a command line.
//
//go:embed job.sh
var jobScript string

// sudoPrefix is what goes before a command that needs root: the privilege
// command for non-root logins, nothing for root.
func sudoPrefix(user, sudo string) string {
	if user == "root" || user == "" || sudo == "" {
		return ""
	}
	return sudo + " "
}

// privileged quotes args and prefixes them with the privilege command for
// non-root users.
func privileged(user, sudo string, args ...string) string {
	return sudoPrefix(user, sudo) + shell.QuoteArgs(args)
}

// program is `sh -c PROGRAM nix-hive ARGS...`, as root when root is set.
func program(prog string, root bool, user, sudo string, args ...string) string {
	argv := append([]string{"sh", "-c", prog, "nix-hive"}, args...)
	if root {
		return privileged(user, sudo, argv...)
	}
	return shell.QuoteArgs(argv)
}

// queryProgram prints what the host runs as key=value lines (see
// parseHostState). It needs no privileges.
const queryProgram = `p=` + profile + `
printf 'active=%s\n' "$(readlink /run/current-system 2>/dev/null)"
printf 'link=%s\n' "$(readlink $p 2>/dev/null)"
if [ -e $p ]; then printf 'profile=%s\n' "$(readlink -f $p)"; fi
printf 'last=%s\n' "$(cat /nix/var/nix-hive/last 2>/dev/null)"
l=/run/nix-hive/activation.lock
if [ -e $l ] && command -v flock >/dev/null 2>&1 && ! flock -n $l true 2>/dev/null; then
  printf 'running=%s\n' "$(cat /run/nix-hive/current 2>/dev/null)"
fi
printf 'boot=%s\n' "$(cat /proc/sys/kernel/random/boot_id 2>/dev/null)"
printf 'rebootmark=%s\n' "$(cat /run/nix-hive/reboot 2>/dev/null)"
`

// lockProgram OWNER takes the host's deploy lock and holds it until its
// stdin closes (nix-hive closes it when done with the host; a dropped
// connection closes it too). It prints "locked", or "held by OWNER" and
// exits 75 when another deploy has it. It waits a few seconds first: the
// holder of a deploy that just died takes a moment to notice.
const lockProgram = `command -v flock >/dev/null 2>&1 || { echo "flock is missing on the host (util-linux)"; exit 2; }
umask 022
mkdir -p /run/nix-hive && exec 9>>/run/nix-hive/deploy.lock || exit 2
o=/run/nix-hive/deploy.owner
if ! flock -w 3 9; then
  printf 'held by %s\n' "$(cat $o 2>/dev/null)"
  exit 75
fi
printf '%s\n' "$1" >$o.tmp && mv -f $o.tmp $o
echo locked
read -r _ || :
`

// startProgram ID GOAL TARGET CONFIRM LIMIT stores the job script from
// stdin in /run/nix-hive/jobs/ID and starts it detached: a transient
// systemd unit where systemd runs (like nixos-rebuild), else a session of
// its own. It returns once the job holds the activation lock (or refused
// to run) and prints the job's first state.
const startProgram = `set -u
command -v flock >/dev/null 2>&1 || { echo "nix-hive: flock is missing on the host (util-linux)" >&2; exit 2; }
id=$1; shift
umask 022
b=/run/nix-hive; d=$b/jobs/$id
mkdir -p $b/jobs && mkdir "$d" && cat >"$d/job.sh" || exit 2
find $b/jobs -mindepth 1 -maxdepth 1 -mtime +7 -exec rm -rf {} + 2>/dev/null
if [ -d /run/systemd/system ] && command -v systemd-run >/dev/null 2>&1; then
  systemd-run --unit="nix-hive-$id" --collect --quiet --no-ask-password --service-type=exec \
    --setenv=PATH="$PATH" ${LOCALE_ARCHIVE:+--setenv=LOCALE_ARCHIVE="$LOCALE_ARCHIVE"} \
    "$(command -v sh)" "$d/job.sh" "$d" "$@" || exit 2
else
  setsid sh "$d/job.sh" "$d" "$@" </dev/null >/dev/null 2>&1 &
fi
i=0
while [ ! -s "$d/state" ]; do
  i=$((i + 1))
  [ $i -le 300 ] || { echo "nix-hive: the activation job did not start; see $d/log" >&2; exit 2; }
  sleep 0.1
done
cat "$d/state"
`

// followProgram ID UNTIL BEAT waits until job ID reaches state UNTIL
// ("activated"; "" for none) or ends, printing a "." every BEAT seconds
// meanwhile (0: never) so that nix-hive notices a connection gone silent,
// and then the job's state: a state line, "gone" (no such job: it never
// started, or a reboot cleared /run) or "lost" (it ended without an
// outcome), then, unless it ended ok, the end of its log. It needs no
// privileges.
const followProgram = `d=/run/nix-hive/jobs/$1 l=/run/nix-hive/activation.lock
[ -d "$d" ] || { echo gone; exit 0; }
n=0 beat=$((${3:-0} * 5))
while :; do
  s=$(cat "$d/state" 2>/dev/null)
  case $s in done*) break ;; esac
  [ -n "$2" ] && [ "$s" = "$2" ] && break
  if flock -n $l true 2>/dev/null; then
    s=$(cat "$d/state" 2>/dev/null)
    case $s in done*) ;; *) s=lost ;; esac
    break
  fi
  sleep 0.2
  n=$((n + 1))
  if [ "$beat" -gt 0 ] && [ "$n" -ge "$beat" ]; then echo .; n=0; fi
done
printf '%s\n' "$s"
case $s in "done ok"*|activated) ;; *) tail -n 15 "$d/log" 2>/dev/null ;; esac
`

// confirmProgram ID confirms an activation awaiting confirmation: the
// rename races the job's own rename at its deadline, and only one wins.
// Exit 1 means too late (the job is returning to what ran before).
const confirmProgram = `d=/run/nix-hive/jobs/$1
if mv "$d/awaiting" "$d/confirmed" 2>/dev/null || [ -e "$d/confirmed" ]; then echo confirmed; exit 0; fi
printf 'too late: %s\n' "$(cat "$d/state" 2>/dev/null)"
exit 1
`

// rebootProgram MARK leaves MARK in /run (which a reboot clears) and
// reboots a second later, so this command returns before the connection
// goes down.
const rebootProgram = `umask 022
mkdir -p /run/nix-hive && printf '%s\n' "$1" >/run/nix-hive/reboot || exit 2
setsid sh -c 'sleep 1; if [ -d /run/systemd/system ]; then systemctl reboot; else reboot; fi' </dev/null >/dev/null 2>&1 &
echo rebooting
`

// HostState is what a host says about itself.
type HostState struct {
	Active     string `json:"active"`     // /run/current-system
	Generation int    `json:"generation"` // of the system profile, 0 when none
	Profile    string `json:"profile"`    // what the profile points at
	// Last is the last activation nix-hive ran there, if any.
	Last *LastActivation `json:"last,omitempty"`
	// Running is the id of an activation job running now.
	Running    string `json:"running,omitempty"`
	BootID     string `json:"-"`
	RebootMark string `json:"-"`
}

// LastActivation is a host's record of the last activation nix-hive ran
// on it (/nix/var/nix-hive/last, kept across reboots).
type LastActivation struct {
	Job    string `json:"job"`
	Goal   Goal   `json:"goal"`
	Path   string `json:"path"`
	Status string `json:"status"` // ok, failed, rolled-back, rollback-failed, running
}

func parseHostState(out string) HostState {
	var hs HostState
	for _, line := range strings.Split(out, "\n") {
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		v = strings.TrimSpace(v)
		switch k {
		case "active":
			hs.Active = v
		case "link": // system-42-link
			if rest, ok := strings.CutPrefix(v, "system-"); ok {
				hs.Generation, _ = strconv.Atoi(strings.TrimSuffix(rest, "-link"))
			}
		case "profile":
			hs.Profile = v
		case "last":
			if f := strings.Fields(v); len(f) == 4 {
				hs.Last = &LastActivation{Job: f[0], Goal: Goal(f[1]), Path: f[2], Status: f[3]}
			}
		case "running":
			hs.Running = v
		case "boot":
			hs.BootID = v
		case "rebootmark":
			hs.RebootMark = v
		}
	}
	return hs
}

// jobState is a job's state line: "running", "activated", "done STATUS
// REASON", or what followProgram says of a job it cannot follow.
type jobState struct {
	id     string
	phase  string // running, activated, done, gone, lost
	status string // for done: ok, failed, rolled-back, rollback-failed, refused
	reason string
	log    string // the end of the job's log, for failures
}

func parseJobState(out string) jobState {
	for strings.HasPrefix(out, ".\n") { // heartbeats
		out = out[2:]
	}
	first, rest, _ := strings.Cut(strings.TrimRight(out, "\n"), "\n")
	f := strings.SplitN(strings.TrimSpace(first), " ", 3)
	js := jobState{phase: f[0], log: strings.TrimSpace(rest)}
	if len(f) > 1 {
		js.status = f[1]
	}
	if len(f) > 2 {
		js.reason = f[2]
	}
	return js
}

func (js jobState) String() string {
	s := strings.TrimSpace(strings.Join([]string{js.phase, js.status, js.reason}, " "))
	if js.log != "" {
		s += fmt.Sprintf(" (log: %s)", lastLines(js.log, 3))
	}
	return s
}
