package host

import (
	"context"
	"io"
	"strconv"

	"github.com/nix-hive/nix-hive/eval"
)

// The programs of key uploads (package keys): their owners' ids, and the
// shell way of writing a key where sftp cannot (a login that is not root,
// a host without sftp).

// keyOwnersProgram USER GROUP ... prints "uid gid" for each pair, or fails
// naming the first user or group the host does not have. The gid is
// getent's third field, cut with the shell's own expansions: a process
// fewer per pair than a pipe to cut, and each costs.
const keyOwnersProgram = `while [ $# -gt 0 ]; do
  u=$(id -u -- "$1" 2>/dev/null) || { echo "no user $1 on the host" >&2; exit 3; }
  g=$(getent group "$2") && g=${g#*:} && g=${g#*:} && g=${g%%:*}
  [ -n "$g" ] || { echo "no group $2 on the host" >&2; exit 3; }
  echo "$u $g"
  shift 2
done
`

// keyWriteProgram DEST UID GID MODE OPEN writes stdin to DEST the same
// way as keys' sftp upload: DEST's missing directories are made 0750
// (keys' dirMode, by umask 027) and, with OPEN 1 (keys' readByOthers),
// those on its way that root:root owns and close to others get o+x. It
// removes the staging directories beside DEST whose writer is gone
// (transport.StagePrefix: named with the host's boot and the writer's
// pid, which for this program is its shell); mktemp -d makes its own,
// 0700, and the file in it is created under a umask that leaves only
// MODE's owner bits. The value arrives on stdin, never on a command line,
// after a line with its length: a value that ends short (the connection
// was lost, nix-hive killed) is never put in place. The file is synced,
// given its owner and then MODE, and renamed over DEST.
const keyWriteProgram = `set -eu
dest=$1 uid=$2 gid=$3 mode=$4 open=$5
dir=${dest%/*}
[ -n "$dir" ] || dir=/
[ -d "$dir" ] || (umask 027 && mkdir -p "$dir")
if [ "$open" = 1 ]; then
  d=$dir
  while :; do
    set -f; set -- $(ls -ldn -- "$d"); set +f
    case $3:$4:$1 in 0:0:d????????[!xt]*) chmod o+x -- "$d" ;; esac
    [ "$d" != / ] || break
    d=${d%/*}; d=${d:-/}
  done
fi
boot=$(cut -c1-8 /proc/sys/kernel/random/boot_id 2>/dev/null) || boot=
name=.nix-hive-
if [ -n "$boot" ] && [ -d "/proc/$$" ]; then
  name=.nix-hive-stage-$boot-$$-
  for s in "$dir"/.nix-hive-stage-*; do
    o=${s##*/.nix-hive-stage-}; b=${o%%-*}; o=${o#*-}; p=${o%%-*}
    case $b in ????????) ;; *) continue ;; esac
    case $p in *[!0-9]*|'') continue ;; esac
    if [ -d "$s" ] && { [ "$b" != "$boot" ] || [ ! -d "/proc/$p" ]; }; then rm -rf "$s"; fi
  done
fi
umask 077
stage=$(mktemp -d "$dir/${name}XXXXXXXX")
trap 'rm -rf "$stage"' EXIT
trap 'exit 129' HUP
trap 'exit 141' PIPE
trap 'exit 143' TERM
tmp=$stage/${dest##*/}
IFS= read -r size || size=
case $size in *[!0-9]*|'') echo "no length before the value" >&2; exit 64 ;; esac
umask "$(printf %o $((0777 & ~(0$mode & 0700))))"
cat >"$tmp"
umask 077
got=$(($(wc -c <"$tmp")))
if [ "$got" != "$size" ]; then
  echo "the value ended after $got of its $size bytes (the upload was cut off)" >&2
  exit 65
fi
sync "$tmp" 2>/dev/null || sync
chown "$uid:$gid" "$tmp"
chmod "$mode" "$tmp"
mv -f "$tmp" "$dest"
`

// KeyOwnersCommand prints "uid gid" for each user and group of pairs
// (user, group, user, group...), as the login, or fails naming the first
// one the host does not have.
func KeyOwnersCommand(pairs ...string) string { return asLogin(keyOwnersProgram, pairs...) }

// KeyOwners runs KeyOwnersCommand on in over r, or, where in's deploy
// lock is held through the agent, as the agent's operation in the lock's
// session (as root: the same answer), a session fewer.
func KeyOwners(ctx context.Context, r Runner, in *eval.Instance, priv *Privilege, pairs []string, stdout, stderr io.Writer) (int, error) {
	argv := agentArgv(keyOwnersProgram, in.User, priv.forHost(in.Name), pairs...)
	return priv.through(r, argv)(ctx, in.Name, KeyOwnersCommand(pairs...), nil, stdout, stderr)
}

// WriteKeyCommand writes a key to dest on in, as root (with priv): its
// value on stdin after a line with its length; owner uid:gid, mode
// (octal, as the hive gives it); open says whether others than root may
// read it, so that its directories let them search (see keyWriteProgram).
func WriteKeyCommand(in *eval.Instance, priv *Privilege, dest string, uid, gid int, mode string, open bool) string {
	o := "0"
	if open {
		o = "1"
	}
	return asRoot(in, priv, keyWriteProgram, dest, strconv.Itoa(uid), strconv.Itoa(gid), mode, o)
}
