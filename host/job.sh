# nix-hive activation job. nix-hive sends this file on the stdin of the
# "start" program (job.go), which stores it in the job's directory and
# runs it detached from the SSH session, as a transient systemd unit where
# systemd runs, else in a session of its own (setsid): a dropped
# connection, or nix-hive being killed, never stops an activation half-way.
#
#   sh job.sh DIR GOAL TARGET CONFIRM LIMIT CHECKS [SPEC]
#
# DIR     the job's directory, /run/nix-hive/jobs/ID (the job writes state,
#         log and before there)
# GOAL    switch, boot, test or dry-activate
# TARGET  a store path (activate it), previous (the newest generation
#         before the current one that is recorded good), or restore:ID
#         (return to what ran before job ID)
# CONFIRM seconds to wait for confirmation after a successful activation
#         (0: none); unconfirmed, the job returns to what ran before
# LIMIT   seconds one switch-to-configuration may take
# CHECKS  1 when nix-hive runs post-activation checks after the job: a
#         successful activation is then recorded "activated" (not yet
#         good) until nix-hive marks it ok or failed (job.go's
#         markProgram)
# SPEC    with a store path TARGET: activate TARGET/specialisation/SPEC
#         (the profile still gets TARGET, as nixos-rebuild --specialisation
#         does); recorded after the status in /nix/var/nix-hive/last
#
# The job writes its progress to DIR/state, always by rename so a reader
# sees a whole line: "running", "activated" (awaiting confirmation), then
# "done STATUS REASON" with STATUS ok, failed, rolled-back or
# rollback-failed. Nothing polls: the job holds DIR/running.lock while it
# runs and DIR/activated.lock while it awaits confirmation (taking the
# second before it lets go of the first), so a follower blocks on those
# locks and wakes when a phase ends, or the job dies. Confirmation is the
# rename of DIR/awaiting to DIR/confirmed, then a line on the FIFO
# DIR/confirm that wakes the job; when time is up the job renames awaiting
# to DIR/expired instead, so exactly one of the two happens.
#
# Records that survive reboots: the outcome of every activation that
# changes the system is kept in /nix/var/nix-hive/last ("ID GOAL PATH
# STATUS"), and that of every system profile generation a job made in
# /nix/var/nix-hive/generations/N ("STATUS PATH ID"): ok (confirmed, its
# checks passed), activated (its checks have not finished), failed,
# rolled-back or rollback-failed. A rollback goes only to a generation
# recorded ok.
set -u
dir=$1 goal=$2 target=$3 confirm=$4 limit=$5 checks=${6:-0} spec=${7-}
id=${dir##*/}
base=${dir%/jobs/*}
profile=/nix/var/nix/profiles/system
record=/nix/var/nix-hive/last
gens=/nix/var/nix-hive/generations
exec </dev/null >>"$dir/log" 2>&1

# Readers of the state wait for the phase lock the job lets go of after
# writing it (or for the start FIFO), so a plain write is whole for them.
setstate() { printf '%s\n' "$*" >"$dir/state"; }
log() { echo "nix-hive: $*"; }
# put FILE LINE replaces FILE with LINE, whole or not at all.
put() { printf '%s\n' "$2" >"$1.tmp" && mv -f "$1.tmp" "$1"; }
# remember STATUS records how this job's activation of $path ended, and
# so the generation it made ($gen); a job that activated nothing (it was
# refused, or found nothing to return to) leaves the records alone.
remember() {
  [ "$goal" = dry-activate ] && return 0
  [ -n "$path" ] || return 0
  st=$1
  [ "$st" = ok ] && [ "$checks" = 1 ] && st=activated
  [ -d "$gens" ] || mkdir -p "$gens" || return 0
  put "$record" "$id $goal $path $st${spec:+ $spec}"
  [ -z "$gen" ] || put "$gens/$gen" "$st $path $id"
}
finish() {
  remember "$1"
  log "$1${2:+: $2}"
  setstate "done $1 $2"
  exit 0
}

# started tells the start command the job is under way (the FIFO is
# opened read-write, so this never blocks, whether or not it listens).
started() {
  exec 9<>"$dir/started" && echo >&9
  exec 9>&-
}

# One activation at a time on this host; the lock goes with this process.
exec 8>>"$base/activation.lock"
if ! flock -n 8; then
  setstate "done refused another activation is running (job $(cat "$base/current" 2>/dev/null))"
  started
  exit 0
fi
printf '%s\n' "$id" >"$base/current"
exec 5>"$dir/running.lock"
flock 5

# resolved LINK sets $r to where LINK leads: cd -P, a builtin, where the
# link leads to a directory (a system always does), so that the job
# starts no process for it; readlink where it does not (a dangling
# link), so that the record still says where it pointed.
resolved() {
  if cd -P "$1" 2>/dev/null; then
    r=$PWD
    cd /
  else
    r=$(readlink -f "$1" 2>/dev/null) || r=
  fi
}

# What runs now, for a return to exactly this.
before_active=
if [ -L /run/current-system ]; then resolved /run/current-system && before_active=$r; fi
before_link=$(readlink "$profile" 2>/dev/null) || before_link=
before_gen=${before_link#system-}
before_gen=${before_gen%-link}
case $before_gen in '' | *[!0-9]*) before_gen= ;; esac
before_profile=
[ -e "$profile" ] && resolved "$profile" && before_profile=$r
printf 'active=%s\ngeneration=%s\nprofile=%s\n' "$before_active" "$before_gen" "$before_profile" >"$dir/before"
path= gen=
setstate running
started

# stc SYSTEM GOAL runs SYSTEM's switch-to-configuration, bounded by LIMIT.
stc() {
  if [ ! -x "$1/bin/switch-to-configuration" ]; then
    log "$1/bin/switch-to-configuration is missing; is the closure complete?"
    return 3
  fi
  log "$1/bin/switch-to-configuration $2"
  # Not the job's locks: a daemon the activation starts must not hold
  # them after the job has ended.
  timeout -k 10 "$limit" "$1/bin/switch-to-configuration" "$2" 5>&- 6>&- 7>&- 8>&-
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
      nix-env -p "$profile" --switch-generation "$r_gen" 5>&- 6>&- 7>&- 8>&- || return 1
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
  if [ "$goal" != boot ]; then
    resolved /run/current-system
    if [ "$r" != "$r_active" ]; then
      log "after the return /run/current-system is ${r:-missing}, not $r_active"
      return 1
    fi
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
  0)
    # The generation that job made is not one to return to.
    g=$(cat "${from%/before}/generation" 2>/dev/null) && [ -n "$g" ] &&
      read -r _ p j <"$gens/$g" && [ "$j" = "${target#restore:}" ] && put "$gens/$g" "rolled-back $p $j"
    finish ok "back on ${path:-nothing}"
    ;;
  2) finish failed "nothing ran before job ${target#restore:}" ;;
  *) finish failed "the return failed (see $dir/log)" ;;
  esac
  ;;
previous)
  # The newest earlier generation recorded ok, whose link still points
  # where the record says: never one rolled back, failed or unchecked.
  prev=
  for g in $(nix-env -p "$profile" --list-generations 5>&- 6>&- 7>&- 8>&- | awk -v cur="$before_gen" '$1 + 0 < cur + 0 { print $1 }'); do
    s= p=
    read -r s p _ <"$gens/$g" 2>/dev/null
    [ "$s" = ok ] && resolved "$profile-$g-link" && [ "$r" = "$p" ] && prev=$g
  done
  [ -n "$prev" ] || finish failed "no generation before ${before_gen:-the current one} is recorded as good on this host (deployed by nix-hive, confirmed, its checks passed); nothing was changed"
  nix-env -p "$profile" --switch-generation "$prev" 5>&- 6>&- 7>&- 8>&- || finish failed "nix-env --switch-generation $prev exited $?"
  resolved "$profile"
  path=$r
  ;;
*)
  # The agent runs this as root for a login sudo lets run the agent
  # alone: only a system in the store, and its own specialisations.
  case $target in /nix/store/*/* | /nix/store/.*) ;; /nix/store/?*) false ;; esac && finish failed "not a store path: $target"
  case $spec in */* | .* | -*) finish failed "not a specialisation: $spec" ;; esac
  [ -z "$spec" ] || [ -x "$target/specialisation/$spec/bin/switch-to-configuration" ] || finish failed "$target has no specialisation $spec"
  path=$target
  case $goal in
  switch | boot)
    nix-env -p "$profile" --set "$path" 5>&- 6>&- 7>&- 8>&- || finish failed "nix-env --set exited $?"
    gen=$(readlink "$profile") && gen=${gen#system-} && gen=${gen%-link}
    case $gen in *[!0-9]* | "$before_gen") gen= ;; esac
    printf '%s\n' "$gen" >"$dir/generation"
    ;;
  esac
  ;;
esac

# What runs once activated: the system, or its specialisation.
act=$path
if [ -n "$spec" ] && [ -n "$path" ] && [ "$path" = "$target" ]; then
  resolved "$path/specialisation/$spec"
  act=$r
fi
stc "$act" "$goal"
rc=$?
why=
if [ "$rc" != 0 ]; then
  why=$(explain "switch-to-configuration $goal" "$rc")
else
  # What a goal promises, checked here so that a wrong result is never
  # confirmed.
  case $goal in
  switch | test)
    resolved /run/current-system
    now=$r
    [ "$now" = "$act" ] || why="/run/current-system is ${now:-missing} after switch-to-configuration $goal, not $act"
    ;;
  esac
  case $goal in
  switch | boot)
    resolved "$profile"
    now=$r
    [ "$now" = "$path" ] || why="the system profile points at ${now:-nothing} after switch-to-configuration $goal, not $path"
    ;;
  esac
fi
if [ -n "$why" ]; then
  if [ "$confirm" -gt 0 ]; then back "$why"; fi
  finish failed "$why"
fi

if [ "$confirm" -gt 0 ]; then
  exec 6>"$dir/activated.lock"
  flock 6
  # The start program made the FIFO with its own (one process for both).
  { [ -p "$dir/confirm" ] || mkfifo "$dir/confirm"; } && exec 7<>"$dir/confirm"
  : >"$dir/awaiting"
  setstate activated
  exec 5>&-
  # Wait for the confirmer's line, at most CONFIRM seconds.
  timeout "$confirm" sh -c 'read -r _ <&7'
  if [ ! -e "$dir/confirmed" ] && mv "$dir/awaiting" "$dir/expired" 2>/dev/null; then
    back "not confirmed within ${confirm}s (no new SSH connection got through)"
  fi
fi
finish ok ""
