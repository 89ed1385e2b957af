package host

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/nix-hive/nix-hive/eval"
	"github.com/nix-hive/nix-hive/shell"
)

// Substitution is a consumer realising store paths from its store, as
// root (nix-store --realise with the store as its only substituter,
// signatures required).
type Substitution struct {
	From  string // the substituter: a store URL
	Store string // the store instance, "" for a URL
	// knownHosts are the pinned keys of an instance store, handed to the
	// consumer's ssh so it checks the store as strictly as nix-hive does.
	knownHosts []string
	port       int
	// Trust is the host's own: its nix.conf must trust the hive key
	// (lib/module.nix does that), unless TrustKey passes PublicKey on
	// the command line for hosts being brought in.
	PublicKey string
	TrustKey  bool
	// ConnectTimeout bounds the consumer's ssh to its store: connecting,
	// and silence on an open connection (3 unanswered keepalives).
	ConnectTimeout time.Duration
}

// FromStore is a substitution from store instance st: over ssh as its
// storeUser (by default its user), with its pinned host keys.
func FromStore(st *eval.Instance) Substitution {
	user := st.StoreUser
	if user == "" {
		user = st.User
	}
	s := Substitution{From: "ssh://" + user + "@" + st.Host, port: st.Port, Store: st.Name}
	for _, k := range st.HostKeys {
		s.knownHosts = append(s.knownHosts, knownHostsName(st.Host, st.Port)+" "+k)
	}
	return s
}

// FromURL is a substitution from a store URL (a binary cache).
func FromURL(url string) Substitution { return Substitution{From: url} }

// SubstituteFailure is a substitution that ran and failed on the
// consumer: nix-store's exit status and what it said.
type SubstituteFailure struct {
	From   string
	Code   int
	Stderr string
}

// Error explains the failure in Nix's words: its error lines, else the
// end of what it said.
func (f *SubstituteFailure) Error() string {
	var errs []string
	for _, l := range strings.Split(f.Stderr, "\n") {
		if strings.Contains(l, "error:") {
			errs = append(errs, strings.TrimSpace(l))
		}
	}
	if len(errs) == 0 {
		errs = []string{lastLines(f.Stderr, 3)}
	}
	return fmt.Sprintf("nix-store --realise from %s exited %d: %s", f.From, f.Code, strings.Join(errs, " | "))
}

// Run realises paths on consumer in, as root (with priv). A transport
// failure is returned as is; nix-store failing there as a
// *SubstituteFailure. Where root's commands are the agent's, it runs in
// the consumer's deploy lock's session when it holds one.
func (s Substitution) Run(ctx context.Context, remote Remote, in *eval.Instance, priv *Privilege, paths []string) error {
	var stderr lockedBuffer
	cmd, argv := s.command(paths, in.User, priv.forHost(in.Name))
	code, err := priv.through(remote, argv)(ctx, in.Name, cmd, nil, io.Discard, &stderr)
	if err == nil && code != 0 {
		err = &SubstituteFailure{From: s.From, Code: code, Stderr: stderr.String()}
	}
	return err
}

// command is the shell command that realises paths on a consumer whose
// login is user, becoming root with esc, and the same as the agent's
// operation (nil when esc does not go through the agent).
func (s Substitution) command(paths []string, user string, esc escalation) (string, []string) {
	secs := max(int(s.ConnectTimeout.Round(time.Second)/time.Second), 1)
	if prefix := esc.agentPrefix(user); prefix != "" {
		// The agent writes the known hosts and sets NIX_SSHOPTS itself,
		// to the options below.
		key := ""
		if s.TrustKey {
			key = s.PublicKey
		}
		argv := []string{"realise", strconv.Itoa(secs), strconv.Itoa(s.port), strconv.Itoa(len(s.knownHosts))}
		if len(s.knownHosts) > 0 {
			argv = append(argv, s.knownHostsHash())
		}
		argv = append(argv, s.knownHosts...)
		argv = append(append(argv, s.From, key), paths...)
		return prefix + shell.QuoteArgs(argv), argv
	}
	var b strings.Builder
	args := []string{"nix-store", "--realise"}
	args = append(args, paths...)
	args = append(args, "--option", "substituters", s.From, "--option", "require-sigs", "true")
	if s.TrustKey && s.PublicKey != "" {
		args = append(args, "--option", "trusted-public-keys", s.PublicKey)
	}
	sshopts := s.sshOpts(secs)
	if len(s.knownHosts) > 0 {
		b.WriteString("umask 077; kh=$(mktemp) || exit 1; trap 'rm -f \"$kh\"' EXIT\n")
		for _, l := range s.knownHosts {
			fmt.Fprintf(&b, "printf '%%s\\n' %s >> \"$kh\"\n", shell.Quote(l))
		}
		sshopts = append(sshopts, "-o", "UserKnownHostsFile=$kh", "-o", "StrictHostKeyChecking=yes")
	}
	// $kh must expand, so this one value is double-quoted; everything in
	// it is either a constant or a number.
	fmt.Fprintf(&b, "NIX_SSHOPTS=\"%s\"; export NIX_SSHOPTS\n", strings.Join(sshopts, " "))
	if prefix := sudoPrefix(user, esc); prefix != "" {
		// sudo drops the environment; pass NIX_SSHOPTS explicitly.
		fmt.Fprintf(&b, "%senv NIX_SSHOPTS=\"$NIX_SSHOPTS\" %s %s >/dev/null\n", prefix, sshMalloc, shell.QuoteArgs(args))
	} else {
		fmt.Fprintf(&b, "%s %s >/dev/null\n", sshMalloc, shell.QuoteArgs(args))
	}
	return b.String(), nil
}

// sshOpts are the consumer's ssh options to its store, less its known
// hosts, which the shell writes to a file first.
func (s Substitution) sshOpts(secs int) []string {
	o := []string{"-o", "BatchMode=yes", "-o", fmt.Sprintf("ConnectTimeout=%d", secs),
		"-o", fmt.Sprintf("ServerAliveInterval=%d", secs), "-o", "ServerAliveCountMax=3"}
	if s.port != 0 && s.port != 22 {
		o = append(o, "-p", fmt.Sprint(s.port))
	}
	return o
}

// agentLine is the one line that substitutes the agent ($0 of
// agentWrapper) from s, with paths, checking the store's host key as a
// consumer's substitution does, and says "need agent carried" when all
// came. The agent is content-addressed: Nix checks its content against
// its name and wants no signature for it; the paths want the hive's, as
// in realiseProgram. --keep-going: a path that fails does not cost the
// agent, and the substitution that follows the lock says why it failed.
func (s Substitution) agentLine(paths []string) string {
	secs := max(int(s.ConnectTimeout.Round(time.Second)/time.Second), 1)
	// Sent once per host, so as short as ssh reads them: -oName=value.
	opts := strings.ReplaceAll(strings.Join(s.sshOpts(secs), " "), "-o ", "-o")
	pre := ""
	if len(s.knownHosts) > 0 {
		// As the agent's realise keeps them (see realiseProgram).
		// $k needs no quotes: a constant and a hash. The directory is
		// missing only where the file is: on a host's first contact.
		pre = `k=` + knownHostsDir + `/known_hosts.` + s.knownHostsHash() + `;[ -s $k ]||{ mkdir -p ` + knownHostsDir +
			`;printf '%s\n' ` + shell.QuoteArgs(s.knownHosts) + ` >$k.$$&&mv $k.$$ $k;}&&`
		opts += ` -oUserKnownHostsFile=$k -oStrictHostKeyChecking=yes`
	}
	args := append([]string{}, paths...)
	args = append(args, "--option", "substituters", s.From)
	if len(paths) > 0 {
		args = append(args, "--option", "require-sigs", "true")
		if s.TrustKey && s.PublicKey != "" {
			args = append(args, "--option", "trusted-public-keys", s.PublicKey)
		}
	}
	// Only $k expands in NIX_SSHOPTS; the rest is constants and numbers.
	return fmt.Sprintf(`%sNIX_SSHOPTS="%s" %s nix-store -r -k "$0" %s >/dev/null&&echo need agent carried;ln -sfn "$0" %s 2>/dev/null`,
		pre, opts, sshMalloc, shell.QuoteArgs(args), agentGCRoot)
}

// knownHostsDir holds, on a host whose root runs the agent, the known
// hosts its substitutions check their stores' keys against, one file per
// set of lines named by their hash (knownHostsHash): written on a
// host's first substitution from a store, and read by every later one,
// so that a deploy spends no process on them (a temporary file was three:
// mktemp, rm, and the shell's fork to run nix-store before rm). A file is
// written beside and renamed into place, so a failed write leaves none;
// the agent's realise compares a file's lines with its own and writes it
// again if they differ, while the agent's substitution (agentLine, sent
// before the host has an agent) trusts one it finds, and a wrong one
// costs it only the agent sent from here instead. Only root writes
// there, under the umask the deploy lock's files get; the files are
// public keys, and /run empties at boot.
const knownHostsDir = "/run/nix-hive"

// knownHostsHash names s's known hosts lines: the same lines, the same
// file; a store's new key, a new file.
func (s Substitution) knownHostsHash() string {
	h := sha256.Sum256([]byte(strings.Join(s.knownHosts, "\n")))
	return hex.EncodeToString(h[:16])
}

// sshMalloc is glibc's malloc set for the nix-store that substitutes
// from a store over ssh, and so for its ssh. OpenSSH grows a channel's
// buffer a packet at a time by allocating a larger one, copying and
// freeing the old (recallocarray); above glibc's mmap threshold each of
// those is a fresh mapping, so an ssh writing a NAR to nix-store's pipe
// faulted in tens of thousands of pages and spent more CPU than
// everything else in the substitution: 0.8 s of CPU and 49,000 page
// faults for an 8 MiB NAR on the lab, 0.15 s and 3,400 with these
// (1.1 s and 0.35 s for 64 MiB; peak RSS 13 and 19 MB). At 2 MiB the
// buffers still outgrew the threshold, 4 MiB sufficed, and 8 leaves them
// room (docs/scale.md, "The consumers' ssh"). glibc reads these names from
// the environment (aliases of its glibc.malloc tunables, which win when
// set); other libcs ignore them.
const sshMalloc = "MALLOC_MMAP_THRESHOLD_=8388608 MALLOC_TRIM_THRESHOLD_=16777216"

func knownHostsName(host string, port int) string {
	if port == 0 || port == 22 {
		return host
	}
	return fmt.Sprintf("[%s]:%d", host, port)
}

// realiseProgram TIMEOUT PORT N [HASH KNOWN_HOST...] SUBSTITUTER
// PUBLIC_KEY PATH... realises store paths from a substituter, signatures
// required, as a consumer's substitution does (see Substitution): N lines
// of known_hosts for the substituter's ssh (0: the host's own), kept in
// knownHostsDir under HASH, their knownHostsHash. It checks its
// arguments: no option reaches nix-store or ssh but those it sets. What
// it realised is not printed: nobody reads it.
const realiseProgram = `set -u
bad() { echo "nix-hive-agent realise: $1" >&2; exit 64; }
[ $# -ge 3 ] || bad "timeout, port and known hosts"
t=$1 port=$2 n=$3; shift 3
case $t$port$n in *[!0-9]*|'') bad "timeout, port and the count of known hosts are numbers" ;; esac
[ $# -ge $((n + 3)) ] || bad "no store paths"
kh=
if [ "$n" -gt 0 ]; then
  case $1 in *[!0-9a-f]*|'') bad "known hosts: a hash" ;; esac
  kh=` + knownHostsDir + `/known_hosts.$1
  shift
  i=0
  while [ $i -lt "$n" ]; do
    i=$((i + 1))
    eval "l=\${$i}"
    case $l in *[![:print:]]*|'') bad "known host: one line" ;; esac
  done
  # The file is right when its lines are these, read with the shell's
  # own read: a deploy spends no process on one it finds right.
  i=0
  if [ -f "$kh" ]; then
    while IFS= read -r l; do
      i=$((i + 1))
      [ $i -le "$n" ] && eval "[ \"\$l\" = \"\${$i}\" ]" || { i=-1; break; }
    done <"$kh"
  fi
  if [ "$i" != "$n" ]; then
    { [ -d ` + knownHostsDir + ` ] || mkdir -p ` + knownHostsDir + `; } && : >"$kh.$$" || exit 1
    i=0
    while [ $i -lt "$n" ]; do
      i=$((i + 1))
      eval "printf '%s\n' \"\${$i}\"" >>"$kh.$$" || exit 1
    done
    mv -f "$kh.$$" "$kh" || exit 1
  fi
  shift "$n"
fi
from=$1 key=$2; shift 2
case $from in *[[:space:]]*|ssh://-*|-*|'') bad "substituter: a URL" ;; esac
case $key in *[[:space:]]*) bad "public key: no spaces" ;; esac
[ $# -gt 0 ] || bad "no store paths"
for p in "$@"; do
  case $p in /nix/store/*/*|/nix/store/.*) bad "not a store path: $p" ;; /nix/store/?*) ;; *) bad "not a store path: $p" ;; esac
done
o="-o BatchMode=yes -o ConnectTimeout=$t -o ServerAliveInterval=$t -o ServerAliveCountMax=3"
[ "$port" = 0 ] || [ "$port" = 22 ] || o="$o -p $port"
[ -z "$kh" ] || o="$o -o UserKnownHostsFile=$kh -o StrictHostKeyChecking=yes"
set -- --realise "$@" --option substituters "$from" --option require-sigs true
[ -z "$key" ] || set -- "$@" --option trusted-public-keys "$key"
NIX_SSHOPTS=$o ` + sshMalloc + ` exec nix-store "$@" >/dev/null
`

// repairProgram KEY PATH, on a store whose copy of PATH a consumer
// refused, checks that copy: "good" when its content matches its hash and
// a signature by KEY verifies (the consumer's refusal was its own), else
// it removes it, with the paths that refer to it, and says "removed", or
// "in use" when one of them is alive there.
const repairProgram = `set -u
key=$1 p=$2
bad() { echo "nix-hive-agent repair: $1" >&2; exit 64; }
case $key in *[[:space:]]*|'') bad "public key: one word" ;; esac
case $p in /nix/store/*/*|/nix/store/.*) bad "not a store path: $p" ;; /nix/store/?*) ;; *) bad "not a store path: $p" ;; esac
if nix --extra-experimental-features nix-command --option trusted-public-keys "$key" store verify --sigs-needed 1 "$p" >/dev/null 2>&1; then
  echo good; exit 0
fi
set -- $(nix-store -q --referrers-closure "$p") || exit 2
nix-store --delete "$@" >/dev/null 2>&1 && echo removed || echo "in use"
`

// Repair checks store's copy of path, which a consumer refused, with
// repairProgram (as root, with priv): verdict is "good" (the consumer
// refused it for reasons of its own), "removed", or "in use". err is why
// the check failed, with what the host said.
func Repair(ctx context.Context, remote Remote, store *eval.Instance, priv *Privilege, key, path string) (verdict string, err error) {
	var out, stderr bytes.Buffer
	code, err := remote.Run(ctx, store.Name, asRoot(store, priv, repairProgram, key, path), nil, &out, &stderr)
	if err != nil || code != 0 {
		return "", errors.Join(err, errors.New(lastLines(stderr.String(), 2)))
	}
	return strings.TrimSpace(out.String()), nil
}

// closureProgram prints the closure of $1, a line "--", then the NAR
// size of each of its paths in the same order. It uses nix-store, not
// nix path-info: hosts need not enable the nix-command feature, and its
// output is the same in every release.
const closureProgram = `p=$(nix-store --query --requisites "$1") || exit 1
printf '%s\n' "$p" --
nix-store --query --size $p
`

// Closure reads path's closure from instance n's store: each of its
// paths with its NAR size.
func Closure(ctx context.Context, remote Remote, n, path string) (map[string]uint64, error) {
	var out, stderr lockedBuffer
	code, err := remote.Run(ctx, n, asLogin(closureProgram, path), nil, &out, &stderr)
	if err != nil {
		return nil, fmt.Errorf("closure of %s on %s: %w", path, n, err)
	}
	if code != 0 {
		return nil, fmt.Errorf("closure of %s on %s: exit %d: %s", path, n, code, lastLines(stderr.String(), 2))
	}
	c, err := parseClosure(out.String())
	if err != nil {
		return nil, fmt.Errorf("closure of %s on %s: %w", path, n, err)
	}
	return c, nil
}

func parseClosure(out string) (map[string]uint64, error) {
	paths, sizes, ok := strings.Cut(strings.TrimSpace(out), "\n--")
	if !ok {
		return nil, fmt.Errorf("no separator in %.60q", out)
	}
	ps, ss := strings.Fields(paths), strings.Fields(sizes)
	if len(ps) != len(ss) {
		return nil, fmt.Errorf("%d paths but %d sizes", len(ps), len(ss))
	}
	c := make(map[string]uint64, len(ps))
	for i, p := range ps {
		n, err := strconv.ParseUint(ss[i], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("size of %s: %w", p, err)
		}
		c[p] = n
	}
	return c, nil
}
