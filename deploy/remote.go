package deploy

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"sync"

	"github.com/nix-hive/nix-hive/transport"
)

// Remote commands are built here and only here, every value quoted with
// transport.Quote: instance names, paths and keys never reach a shell
// unquoted.

const profile = "/nix/var/nix/profiles/system"

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
	return sudoPrefix(user, sudo) + transport.QuoteArgs(args)
}

// activateCommand sets the system profile (for goals that change the boot
// default) and runs switch-to-configuration.
func activateCommand(path string, goal Goal, user, sudo string) string {
	var b strings.Builder
	stc := path + "/bin/switch-to-configuration"
	fmt.Fprintf(&b, "test -x %s || { echo %s >&2; exit 3; }\n", transport.Quote(stc),
		transport.Quote("nix-hive: "+stc+" is missing; is the closure complete?"))
	if goal.SetsProfile() {
		fmt.Fprintf(&b, "%s || exit $?\n", privileged(user, sudo, "nix-env", "-p", profile, "--set", path))
	}
	fmt.Fprintf(&b, "%s\n", privileged(user, sudo, stc, string(goal)))
	return b.String()
}

// queryCommand prints three lines: the active system, the profile's
// current generation link, and the profile's target.
const queryCommand = `readlink /run/current-system || echo; readlink ` + profile + ` || echo; readlink -f ` + profile + ` || echo`

// HostState is what a host says about itself.
type HostState struct {
	Active     string `json:"active"`     // /run/current-system
	Generation int    `json:"generation"` // of the system profile, 0 when none
	Profile    string `json:"profile"`    // what the profile points at
}

func parseHostState(out string) HostState {
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	for len(lines) < 3 {
		lines = append(lines, "")
	}
	hs := HostState{Active: strings.TrimSpace(lines[0]), Profile: strings.TrimSpace(lines[2])}
	// system-42-link
	link := strings.TrimSpace(lines[1])
	if rest, ok := strings.CutPrefix(link, "system-"); ok {
		fmt.Sscanf(strings.TrimSuffix(rest, "-link"), "%d", &hs.Generation)
	}
	return hs
}

// substituteCommand realises paths on a consumer from its store. Trust is
// the host's own: its nix.conf must trust the hive key (lib/module.nix
// does that), unless trustKey is set, which passes the key on the command
// line for hosts being brought in. Pinned host keys of an instance store
// are handed to the consumer's ssh, so it verifies the store as strictly
// as nix-hive itself does.
func substituteCommand(paths []string, substituter string, storeKnownHosts []string, sshPort int, publicKey string, trustKey bool, user, sudo string) string {
	var b strings.Builder
	args := []string{"nix-store", "--realise"}
	args = append(args, paths...)
	args = append(args, "--option", "substituters", substituter, "--option", "require-sigs", "true")
	if trustKey && publicKey != "" {
		args = append(args, "--option", "trusted-public-keys", publicKey)
	}
	var sshopts []string
	if sshPort != 0 && sshPort != 22 {
		sshopts = append(sshopts, "-p", fmt.Sprint(sshPort))
	}
	if len(storeKnownHosts) > 0 {
		b.WriteString("umask 077; kh=$(mktemp) || exit 1; trap 'rm -f \"$kh\"' EXIT\n")
		for _, l := range storeKnownHosts {
			fmt.Fprintf(&b, "printf '%%s\\n' %s >> \"$kh\"\n", transport.Quote(l))
		}
		sshopts = append(sshopts, "-o", "UserKnownHostsFile=$kh", "-o", "StrictHostKeyChecking=yes")
	}
	if len(sshopts) > 0 {
		// $kh must expand, so this one value is double-quoted; everything
		// in it is either a constant or a number.
		fmt.Fprintf(&b, "NIX_SSHOPTS=\"%s\"; export NIX_SSHOPTS\n", strings.Join(sshopts, " "))
	}
	if prefix := sudoPrefix(user, sudo); prefix != "" {
		// sudo drops the environment; pass NIX_SSHOPTS explicitly.
		fmt.Fprintf(&b, "%senv NIX_SSHOPTS=\"$NIX_SSHOPTS\" %s >/dev/null\n", prefix, transport.QuoteArgs(args))
	} else {
		fmt.Fprintf(&b, "%s >/dev/null\n", transport.QuoteArgs(args))
	}
	return b.String()
}

// rollbackCommand switches the profile to its previous generation and
// activates it.
func rollbackCommand(user, sudo string) string {
	return privileged(user, sudo, "nix-env", "-p", profile, "--rollback") + " || exit $?\n" +
		`p=$(readlink -f ` + profile + `) || exit 1` + "\n" +
		sudoPrefix(user, sudo) + `"$p/bin/switch-to-configuration" switch` + "\n"
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
	code, err := remote.Run(ctx, n, queryCommand, nil, &out, &stderr)
	if err != nil {
		return HostState{}, err
	}
	if code != 0 {
		return HostState{}, &queryError{code: code, stderr: stderr.String()}
	}
	return parseHostState(out.String()), nil
}

// rollbackHost switches n's system profile to its previous generation,
// activates it, and returns what n runs afterwards.
func rollbackHost(ctx context.Context, remote Remote, n, user, sudo string) (HostState, error) {
	out := &lockedBuffer{}
	code, err := remote.Run(ctx, n, rollbackCommand(user, sudo), nil, out, out)
	if err == nil && code != 0 {
		err = fmt.Errorf("rollback exited %d: %s", code, lastLines(out.String(), 3))
	}
	if err != nil {
		return HostState{}, err
	}
	return queryHost(ctx, remote, n)
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
