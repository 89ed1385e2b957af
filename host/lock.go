package host

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/nix-hive/nix-hive/eval"
)

// deployOwner names the deploy that holds a host's deploy lock; it exists
// only while one does (or one ended without removing it, when the host
// was cut off: reading it as held then only costs a lock). It is written
// in place, not renamed into place: its only readers are status, which
// asks whether it exists, and a deploy refused the lock, which reads it
// after waiting seconds for a lock its holder took before writing it.
const deployOwner = "/run/nix-hive/deploy.owner"

// lockProgram OWNER takes the host's deploy lock and holds it until its
// stdin closes (nix-hive closes it when done with the host; a dropped
// connection closes it too). It prints "locked" and what the host runs
// (queryProgram's lines, then "end"), or "held by OWNER" and exits 75 when
// another deploy has it. It waits a few seconds first: the holder of a
// deploy that just died takes a moment to notice. Run by the agent ($0
// is the agent's path), it runs the agent's operations it reads on stdin
// meanwhile (opSession).
const lockProgram = `command -v flock >/dev/null 2>&1 || { echo "flock is missing on the host (util-linux)"; exit 2; }
umask 022
{ [ -d /run/nix-hive ] || mkdir -p /run/nix-hive; } && exec 9>>/run/nix-hive/deploy.lock || exit 2
o=/run/nix-hive/deploy.owner
if ! flock -w 3 9; then
  printf "held by %s\n" "$(cat $o 2>/dev/null)"
  exit 75
fi
printf "%s\n" "$1" >$o
echo locked
` + queryProgram + `echo end
if [ "$0" = nix-hive ]; then
  read -r _ || :
else
  a=$0
  while IFS= read -r l; do
    case $l in run\ *) ;; *) break ;; esac
    case $l in *[!a-z0-9\ ]*) break ;; esac
    set -f; set -- $l; set +f
    [ $# = 3 ] || break
    t=$2 n=$3
    set --
    while [ "$n" -gt 0 ] && IFS= read -r x; do set -- "$@" "$x"; n=$((n-1)); done
    [ "$n" = 0 ] || break
    sh "$a" "$@" </dev/null
    c=$?
    echo "$t $c"
    echo "$t $c" >&2
  done
fi
rm -f $o
`

// ErrLocked means another deploy holds the host.
var ErrLocked = errors.New("host is locked by another deploy")

// DeployLock is a held deploy lock on a host: a remote flock that lives
// as long as the command holding it, whose stdin is ours. Closing stdin (or
// losing the connection) releases it, so a crashed nix-hive never leaves a
// host locked.
type DeployLock struct {
	stdin *io.PipeWriter
	done  chan struct{}
	// ops runs the agent's operations in the lock's session, when the
	// lock was taken through the agent (see opSession); else nil.
	ops *opSession
	// carried says the host substituted its closures with the agent,
	// before the lock (AgentSource).
	carried bool
}

// Carried says whether the host got the paths its AgentSource gave with
// the agent, all of them, in the lock's session: its substitution is
// done.
func (l *DeployLock) Carried() bool { return l != nil && l.carried }

// released reports whether the lock's command has ended.
func (l *DeployLock) released() bool {
	select {
	case <-l.done:
		return true
	default:
		return false
	}
}

// errNoAgent means a root login's host still lacks this nix-hive's agent
// after it was asked to get it (rootLockCommand's exit 121), with what
// the host said.
type errNoAgent struct{ why string }

func (e *errNoAgent) Error() string {
	return fmt.Sprintf("no nix-hive-agent at %s: %s", RootAgentPath(), e.why)
}

// lockHost takes the deploy lock of host n with cmd (lockProgram's, as
// root), or fails at once with who holds it. It returns what the host
// runs, read under the lock. ops says cmd is the agent's lock, whose
// session then runs the agent's operations; sup answers the host's
// "need agent" (rootLockCommand) when it lacks the agent.
func lockHost(ctx context.Context, remote Remote, n, cmd string, ops bool, sup *agentSupply) (*DeployLock, State, error) {
	pr, pw := io.Pipe()
	outR, outW := io.Pipe()
	l := &DeployLock{stdin: pw, done: make(chan struct{})}
	type result struct {
		code int
		err  error
	}
	res := make(chan result, 1)
	var stderr lockedBuffer
	errs := newOpStream(&stderr)
	// The lock outlives a first Ctrl-C, like the activations it guards;
	// release ends it, and so does an operation cut off in its session.
	lctx, end := context.WithCancel(context.WithoutCancel(ctx))
	go func() {
		defer close(l.done)
		defer end()
		code, err := remote.Run(lctx, n, cmd, pr, outW, errs)
		errs.close(fmt.Errorf("the lock's session ended: %w", errors.Join(err, fmt.Errorf("exit %d", code))))
		outW.Close()
		pr.Close()
		res <- result{code, err}
	}()
	// Until the lock is held, Ctrl-C stops waiting for it (and for the
	// connection it needs): the command above gives up on the host, and
	// a lock taken later is let go of at once, its stdin being closed.
	stop := context.AfterFunc(ctx, func() {
		pw.Close()
		outR.CloseWithError(fmt.Errorf("lock: %w", context.Cause(ctx)))
	})
	br := bufio.NewReader(outR)
	var line string
	var rerr error
	if sup != nil {
		line, rerr = sup.supply(ctx, br, pw)
	} else {
		line, rerr = br.ReadString('\n')
	}
	line = strings.TrimSpace(line)
	if !stop() {
		return nil, State{}, fmt.Errorf("connect %s and take its deploy lock: %w", n, context.Cause(ctx))
	}
	if rerr == nil && line == "locked" {
		state, err := readState(br)
		out := newOpStream(io.Discard)
		go func() {
			_, err := io.Copy(out, br)
			out.close(fmt.Errorf("the lock's session ended: %w", errors.Join(err, io.EOF)))
		}()
		if err == nil {
			if ops {
				l.ops = &opSession{stdin: pw, out: out, errs: errs, end: end}
			}
			return l, state, nil
		}
		pw.Close()
		r := <-res
		return nil, State{}, fmt.Errorf("lock: %w", errors.Join(r.err, err))
	}
	go io.Copy(io.Discard, outR)
	pw.Close()
	r := <-res
	return nil, State{}, lockRefused(r.code, r.err, line, stderr.String())
}

// lockRefused says why a lock command that did not lock ended as it did
// (exit code or err), its first line and its stderr.
func lockRefused(code int, err error, line, stderr string) error {
	switch {
	case err != nil:
		return fmt.Errorf("lock: %w", err)
	case code == 75:
		return fmt.Errorf("%w: %s", ErrLocked, strings.TrimPrefix(line, "held by "))
	case code == 121:
		return &errNoAgent{why: lastLines(stderr, 3)}
	case needsPassword(stderr):
		return fmt.Errorf("lock: %w", ErrSudoPassword)
	case notAllowed(stderr):
		return fmt.Errorf("lock: %w: %s", errNotAllowed, lastLines(stderr, 1))
	default:
		return fmt.Errorf("lock: exit %d: %s", code, line)
	}
}

// readState reads what the host runs, queryProgram's lines up to "end".
func readState(br *bufio.Reader) (State, error) {
	var state strings.Builder
	for {
		ln, err := br.ReadString('\n')
		if err != nil {
			return State{}, err
		}
		if ln == "end\n" {
			return parseState(state.String()), nil
		}
		state.WriteString(ln)
	}
}

// Lock takes in's deploy lock for owner, becoming root with priv, or
// fails at once with who holds it (ErrLocked); it returns what the host
// runs, read under the lock. When sudo there turns out to want a
// password, the password is asked (once for the run), checked on the
// host, and the lock taken again with it. A root login lacking this
// nix-hive's agent gets it from agent (see AgentSource).
func Lock(ctx context.Context, remote Remote, in *eval.Instance, priv *Privilege, owner string, agent AgentSource) (*DeployLock, State, error) {
	n := in.Name
	if !NeedsPrivilege(in.User) {
		return lockRoot(ctx, remote, n, priv, owner, agent)
	}
	if err := priv.ProbeAgent(ctx, remote, n); err != nil {
		return nil, State{}, fmt.Errorf("lock: %w", err)
	}
	if priv.usesPassword(n) {
		if err := priv.check(ctx, remote, n); err != nil {
			return nil, State{}, fmt.Errorf("lock: %w", err)
		}
	}
	take := func() (*DeployLock, State, error) {
		esc := priv.forHost(n)
		l, hs, err := lockHost(ctx, remote, n, program(lockProgram, true, in.User, esc, owner), esc.viaAgent(in.User), nil)
		priv.hold(n, l)
		return l, hs, err
	}
	l, hs, err := take()
	if errors.Is(err, errNotAllowed) {
		return nil, State{}, fmt.Errorf("%w%s", err, priv.agentMismatch(n))
	}
	if !errors.Is(err, ErrSudoPassword) || priv.usesPassword(n) {
		return l, hs, err
	}
	if err := priv.givePassword(n); err != nil {
		return nil, State{}, fmt.Errorf("lock: %w", err)
	}
	if err := priv.check(ctx, remote, n); err != nil {
		return nil, State{}, fmt.Errorf("lock: %w", err)
	}
	return take()
}

// lockRoot takes the lock of n, whose login is root. With priv, root's
// commands go through this nix-hive's agent in the host's store: the
// lock's command finds it, or asks for it and is answered in the same
// session (substituted from agent's store, else sent from here), once
// per host and nix-hive release. A substitution that fails is followed
// by a lock that sends it. Where it cannot be added (no nix-store for
// the login, say), root's programs are sent with each command, as they
// are without priv (tests' fakes): more bytes per deploy, the same work.
func lockRoot(ctx context.Context, remote Remote, n string, priv *Privilege, owner string, agent AgentSource) (*DeployLock, State, error) {
	whole := program(lockProgram, true, "", escalation{}, owner)
	if priv == nil {
		return lockHost(ctx, remote, n, whole, false, nil)
	}
	sup := &agentSupply{from: agent}
	l, hs, err := lockHost(ctx, remote, n, rootLockCommand(owner), true, sup)
	var missing *errNoAgent
	if errors.As(err, &missing) && sup.substituted {
		sup = &agentSupply{}
		l, hs, err = lockHost(ctx, remote, n, rootLockCommand(owner), true, sup)
	}
	if errors.As(err, &missing) {
		priv.warn(fmt.Sprintf("%s: %v; nix-hive's programs go with each command there instead", n, err))
		return lockHost(ctx, remote, n, whole, false, nil)
	}
	if err == nil {
		l.carried = sup.carried
		priv.rootAgentFound(n)
		priv.hold(n, l)
	}
	return l, hs, err
}

// Release lets go of the lock, and waits a moment for the host to say it
// did, so that a deploy started right after finds it free: at most a
// second (an unreachable host never answers; its sshd ends the holder
// with the connection), and not at all once ctx ended (Ctrl-C: the user
// is not waiting for that, and the next deploy's lock waits 3 seconds).
func (l *DeployLock) Release(ctx context.Context) {
	if l == nil {
		return
	}
	l.stdin.Close()
	select {
	case <-l.done:
	case <-ctx.Done():
	case <-time.After(time.Second):
	}
}
