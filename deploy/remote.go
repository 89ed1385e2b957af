package deploy

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/nix-hive/nix-hive/shell"
)

// substitution is a consumer realising paths from its store.
type substitution struct {
	paths []string
	from  string // the substituter: a store URL
	store string // the store instance, "" for a URL
	// knownHosts are the pinned keys of an instance store, handed to the
	// consumer's ssh so it checks the store as strictly as nix-hive does.
	knownHosts []string
	port       int
	// Trust is the host's own: its nix.conf must trust the hive key
	// (lib/module.nix does that), unless trustKey passes the key on the
	// command line for hosts being brought in.
	publicKey string
	trustKey  bool
	user      string
	esc       escalation
	// connectTimeout bounds the consumer's ssh to its store: connecting,
	// and silence on an open connection (3 unanswered keepalives).
	connectTimeout time.Duration
}

// command is the shell command that realises the paths on the consumer.
func (s substitution) command() string {
	var b strings.Builder
	args := []string{"nix-store", "--realise"}
	args = append(args, s.paths...)
	args = append(args, "--option", "substituters", s.from, "--option", "require-sigs", "true")
	if s.trustKey && s.publicKey != "" {
		args = append(args, "--option", "trusted-public-keys", s.publicKey)
	}
	secs := max(int(s.connectTimeout.Round(time.Second)/time.Second), 1)
	sshopts := []string{"-o", "BatchMode=yes", "-o", fmt.Sprintf("ConnectTimeout=%d", secs),
		"-o", fmt.Sprintf("ServerAliveInterval=%d", secs), "-o", "ServerAliveCountMax=3"}
	if s.port != 0 && s.port != 22 {
		sshopts = append(sshopts, "-p", fmt.Sprint(s.port))
	}
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
	prefix := sudoPrefix(s.user, s.esc)
	if s.esc.viaAgent(s.user) {
		// The agent sets NIX_SSHOPTS itself, to the same options.
		key := ""
		if s.trustKey {
			key = s.publicKey
		}
		fmt.Fprintf(&b, "%srealise %d %d \"${kh-}\" %s %s %s >/dev/null\n", prefix, secs, s.port, shell.Quote(s.from), shell.Quote(key), shell.QuoteArgs(s.paths))
		return b.String()
	}
	if prefix != "" {
		// sudo drops the environment; pass NIX_SSHOPTS explicitly.
		fmt.Fprintf(&b, "%senv NIX_SSHOPTS=\"$NIX_SSHOPTS\" %s >/dev/null\n", prefix, shell.QuoteArgs(args))
	} else {
		fmt.Fprintf(&b, "%s >/dev/null\n", shell.QuoteArgs(args))
	}
	return b.String()
}

// queryError is a query that ran but failed on the host.
type queryError struct {
	code   int
	stderr string
}

func (e *queryError) Error() string {
	return fmt.Sprintf("query system: exit %d: %s", e.code, lastLines(e.stderr, 2))
}

// queryHost asks instance n what it runs. A transport failure is returned
// as is; a failing query on the host as *queryError.
func queryHost(ctx context.Context, remote Remote, n string) (HostState, error) {
	var out, stderr bytes.Buffer
	code, err := remote.Run(ctx, n, program(queryProgram, false, "", escalation{}), nil, &out, &stderr)
	if err != nil {
		return HostState{}, err
	}
	if code != 0 {
		return HostState{}, &queryError{code: code, stderr: stderr.String()}
	}
	return parseHostState(out.String()), nil
}

// lockedBuffer collects a command's stdout and stderr together; the SSH
// session writes the two streams from different goroutines.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
