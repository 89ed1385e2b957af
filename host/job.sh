# nix-hive activation job. nix-hive sends this file on the stdin of the
# "start" program (job.go), which stores it in the job's directory and
# runs it detached from the SSH session, as a transient systemd unit where
# systemd runs, else in a session of its own (setsid): a dropped
# connection, or nix-hive being killed, never stops an activation half-way.
#
#   sh job.sh DIR GOAL TARGET CONFIRM LIMIT CHECKS [SPEC [PROFILE...]]
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
# PROFILE with a store path TARGET: a profile beside the system one, as
#         NAME:USER:PATH:ACTIVATE. Once the system is activated, PATH
#         becomes /nix/var/nix/profiles/per-user/USER/NAME (switch, boot)
#         and USER runs PATH/ACTIVATE (switch, test); a profile nix-hive
#         set earlier that the job does not name is removed. A failed
#         activation of one fails the job like the system's would.
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
# recorded ok. The profiles nix-hive set are kept in
# /nix/var/nix-hive/profiles (their words, one line), and those that went
# with each generation the job made in /nix/var/nix-hive/profile-sets/N:
# every return to what ran before returns them too.
set -u
dir=$1 goal=$2 target=$3 confirm=$4 limit=$5 checks=${6:-0} spec=${7-}
[ $# -gt 7 ] && shift 7 || set --
pwant=$*
id=${dir##*/}
base=${dir%/jobs/*}
profile=/nix/var/nix/profiles/system
record=/nix/var/nix-hive/last
gens=/nix/var/nix-hive/generations
precs=/nix/var/nix-hive/profiles
psets=/nix/var/nix-hive/profile-sets
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
  # The profiles recorded now went with the generation the profile is
  # at (this job's, or the one nix-env kept for the same system); a host
  # that never had profiles is spared the record of none.
  if [ -n "$pgen" ] && [ -n "$pwant$pbefore" ]; then
    q=
    read -r q <$precs 2>/dev/null
    mkdir -p $psets && put $psets/$pgen "$q"
  fi
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
pbefore=
read -r pbefore <$precs 2>/dev/null
printf 'active=%s\ngeneration=%s\nprofile=%s\nprofiles=%s\n' "$before_active" "$before_gen" "$before_profile" "$pbefore" >"$dir/before"
path= gen= pgen= pdone= pfrom=
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

# pw WORD splits a profile word into $pn $pu $pp $pa and its profile $P;
# false when it is not one: the agent runs this as root for a login sudo
# lets run the agent alone.
pw() {
  pn=${1%%:*} r=${1#*:}
  pu=${r%%:*} r=${r#*:}
  pp=${r%%:*} pa=${r#*:}
  P=/nix/var/nix/profiles/per-user/$pu/$pn
  case $pn:$pu in [.+-]* | *:[.+-]* | *[!A-Za-z0-9_.+:-]* | :* | *:) return 1 ;; esac
  case $pp in /nix/store/*/* | /nix/store/.*) return 1 ;; /nix/store/?*) ;; *) return 1 ;; esac
  case $pa in '' | /* | *..* | *[!A-Za-z0-9_.+/-]*) return 1 ;; esac
}

# pon WORD sets the profile (goals that set profiles) and runs its
# activation as its user (goals that activate), bounded by LIMIT.
pon() {
  pw "$1" || return 1
  log "profile $pn of $pu: $pp"
  u=$(id -u "$pu" 2>/dev/null) || { pwhy="profile $pn: $pu is no user on the host"; return 1; }
  if [ "$goal" != test ]; then
    mkdir -p "${P%/*}" && nix-env -p "$P" --set "$pp" 5>&- 6>&- 7>&- 8>&- &&
      chown -h "$pu" "${P%/*}" "$P" "${P%/*}/$(readlink "$P")" || return 1
  fi
  [ "$goal" = boot ] && return 0
  x=/run/user/$u
  [ -d "$x" ] || x=
  PROFILE=$P XDG_RUNTIME_DIR=$x timeout -k 10 "$limit" runuser -u "$pu" -- "$pp/$pa" 5>&- 6>&- 7>&- 8>&-
}

# pto FROM TO moves the profiles from set FROM to set TO: each of TO's
# that FROM lacks is set and activated, each of FROM's that TO has no
# word for is removed; TO is recorded (goals that set profiles).
pto() {
  [ "$1" = "$2" ] && return 0
  pdone=1
  for w in $2; do
    case " $1 " in *" $w "*) continue ;; esac
    pwhy=
    pon "$w" || { [ -n "$pwhy" ] || pwhy=$(explain "profile $pn of $pu: $pp/$pa" $?); return 1; }
  done
  for w in $1; do
    pw "$w" && case " $2 " in *" $pn:$pu:"*) ;; *) log "profile $pn of $pu: removed" && [ "$goal" = test ] || rm -f "$P" ;; esac
  done
  [ "$goal" = test ] || { mkdir -p $psets && put $precs "$2"; } || { pwhy="cannot write $precs"; return 1; }
}

# restore [ACTIVE GENERATION PROFILE PROFILES] returns to what ran before
# (this job's, or the given): the profile to its generation (goals that
# set it), the system that was active (goals that activate), and the
# profiles this job changed.
restore() {
  r_active=${1-$before_active} r_gen=${2-$before_gen} r_profile=${3-$before_profile} r_profiles=${4-$pbefore}
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
  [ -z "$pdone" ] || pto "${pfrom:-$pwant}" "$r_profiles" || { log "$pwhy"; return 1; }
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
  # The profiles it changed (a record without them changed none).
  f_profiles=$(sed -n 's/^profiles=/=/p' "$from")
  case $f_profiles in =*) pdone=1 pfrom=$pbefore f_profiles=${f_profiles#=} ;; esac
  path=$f_active
  [ "$goal" = boot ] && path=$f_profile
  restore "$f_active" "$f_gen" "$f_profile" "$f_profiles"
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
  # The profiles that went with it; none recorded: they stay as they are.
  pwant=$pbefore
  [ -r $psets/$prev ] && read -r pwant <$psets/$prev
  ;;
*)
  # The agent runs this as root for a login sudo lets run the agent
  # alone: only a system in the store, and its own specialisations.
  case $target in /nix/store/*/* | /nix/store/.*) ;; /nix/store/?*) false ;; esac && finish failed "not a store path: $target"
  case $spec in */* | .* | -*) finish failed "not a specialisation: $spec" ;; esac
  [ -z "$spec" ] || [ -x "$target/specialisation/$spec/bin/switch-to-configuration" ] || finish failed "$target has no specialisation $spec"
  for w in $pwant; do pw "$w" || finish failed "not a profile: $w"; done
  path=$target
  case $goal in
  switch | boot)
    nix-env -p "$profile" --set "$path" 5>&- 6>&- 7>&- 8>&- || finish failed "nix-env --set exited $?"
    gen=$(readlink "$profile") && gen=${gen#system-} && gen=${gen%-link}
    pgen=$gen
    case $gen in *[!0-9]* | "$before_gen") gen= ;; esac
    case $pgen in *[!0-9]*) pgen= ;; esac
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
  # Then the profiles, once the system they may need runs.
  [ -n "$why" ] || [ "$goal" = dry-activate ] || pto "$pbefore" "$pwant" || why=$pwhy
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
  # Wait for the confirmer's line, at most CONFIRM seconds: with bash's
  # timed read where sh is bash (NixOS), else with timeout and a shell.
  if [ -n "${BASH_VERSION-}" ]; then read -r -t "$confirm" _ <&7; else timeout "$confirm" sh -c 'read -r _ <&7'; fi
  if [ ! -e "$dir/confirmed" ] && mv "$dir/awaiting" "$dir/expired" 2>/dev/null; then
    back "not confirmed within ${confirm}s (no new SSH connection got through)"
  fi
fi
finish ok ""
