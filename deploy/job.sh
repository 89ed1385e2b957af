# nix-hive activation job. nix-hive sends this file on the stdin of the
# "start" command (agent.go), which stores it in the job's directory and
# runs it detached from the SSH session, as a transient systemd unit where
# systemd runs, else in a session of its own (setsid): a dropped
# connection, or nix-hive being killed, never stops an activation half-way.
#
#   sh job.sh DIR GOAL TARGET CONFIRM LIMIT
#
# DIR     the job's directory, /run/nix-hive/jobs/ID (the job writes state,
#         log and before there)
# GOAL    switch, boot, test or dry-activate
# TARGET  a store path (activate it), previous (the profile's previous
#         generation), or restore:ID (return to what ran before job ID)
# CONFIRM seconds to wait for confirmation after a successful activation
#         (0: none); unconfirmed, the job returns to what ran before
# LIMIT   seconds one switch-to-configuration may take
#
# The job writes its progress to DIR/state, always by rename so a reader
# sees a whole line: "running", "activated" (awaiting confirmation), then
# "done STATUS REASON" with STATUS ok, failed, rolled-back or
# rollback-failed. Confirmation is the rename of DIR/awaiting to
# DIR/confirmed; when time is up the job renames it to DIR/expired
# instead, so exactly one of the two happens. The outcome of every
# activation that changes the system is also kept in /nix/var/nix-hive/last
# ("ID GOAL PATH STATUS"), which survives reboots.
set -u
dir=$1 goal=$2 target=$3 confirm=$4 limit=$5
id=${dir##*/}
base=${dir%/jobs/*}
profile=/nix/var/nix/profiles/system
record=/nix/var/nix-hive/last
exec </dev/null >>"$dir/log" 2>&1

setstate() { printf '%s\n' "$*" >"$dir/state.tmp" && mv -f "$dir/state.tmp" "$dir/state"; }
log() { echo "nix-hive: $*"; }
remember() {
  [ "$goal" = dry-activate ] && return 0
  mkdir -p "${record%/*}" && printf '%s %s %s %s\n' "$id" "$goal" "$path" "$1" >"$record.tmp" && mv -f "$record.tmp" "$record"
}
finish() {
  remember "$1"
  log "$1${2:+: $2}"
  setstate "done $1 $2"
  exit 0
}

# One activation at a time on this host; the lock goes with this process.
exec 8>>"$base/activation.lock"
if ! flock -n 8; then
  setstate "done refused another activation is running (job $(cat "$base/current" 2>/dev/null))"
  exit 0
fi
printf '%s\n' "$id" >"$base/current"

# What runs now, for a return to exactly this.
before_active=$(readlink /run/current-system 2>/dev/null) || before_active=
before_link=$(readlink "$profile" 2>/dev/null) || before_link=
before_gen=${before_link#system-}
before_gen=${before_gen%-link}
case $before_gen in '' | *[!0-9]*) before_gen= ;; esac
before_profile=
[ -e "$profile" ] && before_profile=$(readlink -f "$profile")
printf 'active=%s\ngeneration=%s\nprofile=%s\n' "$before_active" "$before_gen" "$before_profile" >"$dir/before"
path=
setstate running

# stc SYSTEM GOAL runs SYSTEM's switch-to-configuration, bounded by LIMIT.
stc() {
  if [ ! -x "$1/bin/switch-to-configuration" ]; then
    log "$1/bin/switch-to-configuration is missing; is the closure complete?"
    return 3
  fi
  log "$1/bin/switch-to-configuration $2"
  if command -v timeout >/dev/null 2>&1; then
    timeout -k 10 "$limit" "$1/bin/switch-to-configuration" "$2"
  else
    "$1/bin/switch-to-configuration" "$2"
  fi
}

explain() { # explain STEP CODE
  if [ "$2" = 124 ] || [ "$2" = 137 ]; then echo "$1 did not finish within ${limit}s"; else echo "$1 exited $2"; fi
}

# restore [ACTIVE GENERATION PROFILE] returns to what ran before (this
# job's, or the given): the profile to its generation (goals that set it)
# and the system that was active (goals that activate).
restore() {
  r_active=${1-$before_active} r_gen=${2-$before_gen} r_profile=${3-$before_profile}
  case $goal in
  switch | boot)
    if [ -n "$r_gen" ]; then
      nix-env -p "$profile" --switch-generation "$r_gen" || return 1
    fi
    ;;
  esac
  case $goal in
  switch)
    [ -n "$r_active" ] || return 2
    if [ "$r_active" = "$r_profile" ] || [ -z "$r_profile" ]; then
      stc "$r_active" switch || return 1
    else
      stc "$r_active" test && stc "$r_profile" boot || return 1
    fi
    ;;
  test)
    [ -n "$r_active" ] || return 2
    stc "$r_active" test || return 1
    ;;
  boot)
    [ -n "$r_profile" ] || return 2
    stc "$r_profile" boot || return 1
    ;;
  esac
  if [ "$goal" != boot ] && [ "$(readlink /run/current-system)" != "$r_active" ]; then
    log "after the return /run/current-system is $(readlink /run/current-system), not $r_active"
    return 1
  fi
  return 0
}

# back REASON: return to what ran before and finish with what happened.
back() {
  log "returning to ${before_active:-nothing}: $1"
  restore
  case $? in
  0) finish rolled-back "$1" ;;
  2) finish failed "$1; nothing ran before to return to" ;;
  *) finish rollback-failed "$1; the return to $before_active failed too (see $dir/log)" ;;
  esac
}

case $target in
restore:*)
  from=$base/jobs/${target#restore:}/before
  [ -r "$from" ] || finish failed "no record of what ran before job ${target#restore:}"
  f_active=$(sed -n 's/^active=//p' "$from")
  f_gen=$(sed -n 's/^generation=//p' "$from")
  f_profile=$(sed -n 's/^profile=//p' "$from")
  path=$f_active
  [ "$goal" = boot ] && path=$f_profile
  restore "$f_active" "$f_gen" "$f_profile"
  case $? in
  0) finish ok "back on ${path:-nothing}" ;;
  2) finish failed "nothing ran before job ${target#restore:}" ;;
  *) finish failed "the return failed (see $dir/log)" ;;
  esac
  ;;
previous)
  prev=$(nix-env -p "$profile" --list-generations | awk -v cur="$before_gen" '$1 + 0 < cur + 0 { p = $1 } END { print p }')
  [ -n "$prev" ] || finish failed "the system profile has no generation before ${before_gen:-the current one}"
  nix-env -p "$profile" --switch-generation "$prev" || finish failed "nix-env --switch-generation $prev exited $?"
  path=$(readlink -f "$profile")
  ;;
*)
  path=$target
  case $goal in
  switch | boot)
    nix-env -p "$profile" --set "$path" || finish failed "nix-env --set exited $?"
    ;;
  esac
  ;;
esac

stc "$path" "$goal"
rc=$?
why=
if [ "$rc" != 0 ]; then
  why=$(explain "switch-to-configuration $goal" "$rc")
else
  # What a goal promises, checked here so that a wrong result is never
  # confirmed.
  case $goal in
  switch | test)
    now=$(readlink /run/current-system)
    [ "$now" = "$path" ] || why="/run/current-system is ${now:-missing} after switch-to-configuration $goal, not $path"
    ;;
  esac
  case $goal in
  switch | boot)
    now=$(readlink -f "$profile")
    [ "$now" = "$path" ] || why="the system profile points at ${now:-nothing} after switch-to-configuration $goal, not $path"
    ;;
  esac
fi
if [ -n "$why" ]; then
  if [ "$confirm" -gt 0 ]; then back "$why"; fi
  finish failed "$why"
fi

if [ "$confirm" -gt 0 ]; then
  : >"$dir/awaiting"
  setstate activated
  deadline=$(($(date +%s) + confirm))
  while [ ! -e "$dir/confirmed" ]; do
    if [ "$(date +%s)" -ge "$deadline" ] && mv "$dir/awaiting" "$dir/expired" 2>/dev/null; then
      back "not confirmed within ${confirm}s (no new SSH connection got through)"
    fi
    sleep 0.2
  done
fi
finish ok ""
