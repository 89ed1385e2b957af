package deploy

import (
	"bytes"
	"compress/gzip"
	_ "embed"
	"fmt"
	"strconv"
	"strings"
	"sync"

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
	gzippedJob = sync.OnceValue(func() string {
		var b bytes.Buffer
		w, _ := gzip.NewWriterLevel(&b, gzip.BestCompression)
		w.Write([]byte(compactJob()))
		w.Close()
		return b.String()
	})
)

// compact drops comment lines, blank lines and indentation from a shell
// program. It is only correct for programs with no multi-line quoted
// strings or here-documents, which TestProgramsCompact checks for every
// program in this package.
func compact(prog string) string {
	var b strings.Builder
	for _, line := range strings.Split(prog, "\n") {
		line = strings.TrimLeft(line, " \t")
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		b.WriteString(line)
		b.WriteByte('\n')
	}
	return b.String()
}

// escalation is how one host's commands become root.
type escalation struct {
	// prefix is the privilege command with its flags ("" runs commands
	// as the login), ending with the host agent's path when agent is set.
	prefix string
	agent  bool
}

// needsPrivilege reports whether a login must go through the privilege
// command for root's work: every login but root's.
func needsPrivilege(user string) bool { return user != "root" && user != "" }

// sudoPrefix is what goes before a command that needs root: the privilege
// command for non-root logins, nothing for root.
func sudoPrefix(user string, esc escalation) string {
	if !needsPrivilege(user) || esc.prefix == "" {
		return ""
	}
	return esc.prefix + " "
}

// viaAgent reports whether user's root commands are the host agent's
// operations.
func (e escalation) viaAgent(user string) bool { return e.agent && sudoPrefix(user, e) != "" }

// program is `sh -c PROGRAM nix-hive ARGS...`, as root when root is set:
// for a non-root login through its privilege command, and through the
// host agent's operation for the program where the host has the agent.
func program(prog string, root bool, user string, esc escalation, args ...string) string {
	argv := append([]string{"sh", "-c", compact(prog), "nix-hive"}, args...)
	if !root {
		return shell.QuoteArgs(argv)
	}
	prefix := sudoPrefix(user, esc)
	if op, ok := agentOps[prog]; ok && esc.viaAgent(user) {
		return prefix + shell.QuoteArgs(append([]string{op}, args...))
	}
	return prefix + shell.QuoteArgs(argv)
}

// queryProgram prints what the host runs as key=value lines (see
// parseHostState). It needs no privileges and always exits 0; what goes
// wrong shows as empty values, so its stderr is dropped once, not per
// command. Every process it spares is spared on each host of every status
// and deploy, and on the lab a query's processes cost the host as much as
// the session that runs it: it reads files with the shell's read, not
// cat; both links with one readlink (whose output follows its operands; a
// link that vanishes between the test and readlink leaves one word, and
// then each is read alone); and the profile's store path with cd -P
// rather than readlink -f; and the activation lock with flock on a
// descriptor the shell opens, rather than with flock running true.
const queryProgram = `p=` + profile + ` c=/run/current-system
{
line() { v=; read -r v <"$2"; printf "%s=%s\n" "$1" "$v"; }
set -f; set --
[ -L $c ] && [ -L $p ] && set -- $(readlink $c $p)
[ $# = 2 ] || set -- "$(readlink $c)" "$(readlink $p)"
echo "active=$1"; echo "link=$2"
cd -P $p && echo "profile=$PWD" && cd / || { [ -e $p ] && echo "profile=$(readlink -f $p)"; }
line last /nix/var/nix-hive/last
l=/run/nix-hive/activation.lock
if [ -e $l ] && command -v flock >/dev/null && ! flock -n 9 9<$l; then
  line running /run/nix-hive/current
fi
line boot /proc/sys/kernel/random/boot_id
line rebootmark /run/nix-hive/reboot
if command -v gzip >/dev/null; then echo gzip=1; fi
t=
while IFS= read -r l; do
  l=${l%%#*}
  case $l in *trusted-public-keys*=*) set -- ${l%%=*}; case $1 in trusted-public-keys|extra-trusted-public-keys) t="$t ${l#*=}" ;; esac ;; esac
done </etc/nix/nix.conf && echo "trusted=$t"
} 2>/dev/null
`

// lockProgram OWNER takes the host's deploy lock and holds it until its
// stdin closes (nix-hive closes it when done with the host; a dropped
// connection closes it too). It prints "locked" and what the host runs
// (queryProgram's lines, then "end"), or "held by OWNER" and exits 75 when
// another deploy has it. It waits a few seconds first: the holder of a
// deploy that just died takes a moment to notice.
const lockProgram = `command -v flock >/dev/null 2>&1 || { echo "flock is missing on the host (util-linux)"; exit 2; }
umask 022
mkdir -p /run/nix-hive && exec 9>>/run/nix-hive/deploy.lock || exit 2
o=/run/nix-hive/deploy.owner
if ! flock -w 3 9; then
  printf "held by %s\n" "$(cat $o 2>/dev/null)"
  exit 75
fi
printf "%s\n" "$1" >$o.tmp && mv -f $o.tmp $o
echo locked
` + queryProgram + `echo end
read -r _ || :
rm -f $o
`

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
  wait_lock running.lock "$3"
  [ "$2" = activated ] || wait_lock activated.lock "$3"
  s=$(cat "$d/state" 2>/dev/null)
  case $s in done*|activated) ;; *) s=lost ;; esac
  printf "%s\n" "$s"
  case $s in "done ok"*|activated) ;; *) tail -n 15 "$d/log" 2>/dev/null ;; esac
}
# wait_lock LOCK BEAT: until the job lets go of LOCK (or dies); a lock
# never taken is not waited for.
wait_lock() {
  [ -e "$d/$1" ] || return 0
  while :; do
    flock -s -w "$2" "$d/$1" true 2>/dev/null
    [ $? = 1 ] || return 0
    echo .
  done
}
`

// startProgram ID UNTIL BEAT ENC GOAL TARGET CONFIRM LIMIT CHECKS stores the job
// script from stdin (gzipped when ENC is "gzip") in /run/nix-hive/jobs/ID, starts it detached (a
// transient systemd unit where systemd runs, like nixos-rebuild, else a
// session of its own) and, in the same SSH session, waits for it like
// waitProgram.
const startProgram = waitProgram + `set -u
for t in flock setsid timeout mkfifo; do
  command -v $t >/dev/null 2>&1 || { echo "nix-hive: $t is missing on the host (util-linux, coreutils)" >&2; exit 2; }
done
id=$1 until=$2 beat=$3 enc=$4; shift 4
goal=$1 target=$2 confirm=$3 limit=$4 checks=${5:-0}
umask 022
b=/run/nix-hive; d=$b/jobs/$id
unpack() { if [ "$enc" = gzip ]; then gzip -dc; else cat; fi; }
mkdir -p "$d" && unpack >"$d/job.sh" && mkfifo "$d/started" || exit 2
exec 3<>"$d/started"
set -- $b/jobs/*
[ $# -le 100 ] || (find $b/jobs -mindepth 1 -maxdepth 1 -mtime +7 -exec rm -rf {} + 2>/dev/null &)
set -- "$goal" "$target" "$confirm" "$limit" "$checks"
if [ -d /run/systemd/system ] && command -v systemd-run >/dev/null 2>&1; then
  systemd-run --unit="nix-hive-$id" --collect --quiet --no-ask-password --service-type=exec \
    --setenv=PATH="$PATH" ${LOCALE_ARCHIVE:+--setenv=LOCALE_ARCHIVE="$LOCALE_ARCHIVE"} \
    "$(command -v sh)" "$d/job.sh" "$d" "$@" || exit 2
else
  setsid sh "$d/job.sh" "$d" "$@" </dev/null >/dev/null 2>&1 3>&- &
fi
timeout 30 sh -c 'read -r _ <&3' || { echo "nix-hive: the activation job did not start; see $d/log" >&2; exit 2; }
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
	// Gzip says the host has gzip: the job script goes there compressed.
	Gzip bool `json:"-"`
	// Trusted are the keys the host's /etc/nix/nix.conf trusts
	// (trusted-public-keys and extra-trusted-public-keys), when TrustRead.
	Trusted   []string `json:"-"`
	TrustRead bool     `json:"-"`
}

// LastActivation is a host's record of the last activation nix-hive ran
// on it (/nix/var/nix-hive/last, kept across reboots).
type LastActivation struct {
	Job  string `json:"job"`
	Goal Goal   `json:"goal"`
	Path string `json:"path"`
	// Status is ok, failed, rolled-back, rollback-failed, or activated:
	// the activation succeeded and its post-activation checks have not
	// finished (nix-hive stopped during them, say).
	Status string `json:"status"`
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
		case "gzip":
			hs.Gzip = v == "1"
		case "trusted":
			hs.Trusted, hs.TrustRead = strings.Fields(v), true
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
	out = skipBeats(out)
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

// skipBeats drops the heartbeat lines at the start of out.
func skipBeats(out string) string {
	for strings.HasPrefix(out, ".\n") {
		out = out[2:]
	}
	return out
}
