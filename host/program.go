package host

import (
	"strings"

	"github.com/nix-hive/nix-hive/eval"
	"github.com/nix-hive/nix-hive/shell"
)

// Remote commands are built here and only here. Each is a fixed shell
// program run as `sh -c PROGRAM nix-hive ARG...`: instance names, paths,
// keys and owners arrive as quoted arguments and are never pasted into
// the program.

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
	// installed is the path of this nix-hive's agent in the host's
	// store for a root login (RootAgentPath), once a command found it
	// there: root's commands are then its operations, and no program
	// travels with them.
	installed string
}

// NeedsPrivilege reports whether a login must go through the privilege
// command for root's work: every login but root's (a hive that names no
// user logs in as root). Every "is this login root" asks it: the
// commands built here, key uploads' sftp, nix copy's remote program.
func NeedsPrivilege(user string) bool { return user != "root" && user != "" }

// sudoPrefix is what goes before a command that needs root: the privilege
// command for non-root logins, nothing for root.
func sudoPrefix(user string, esc escalation) string {
	if !NeedsPrivilege(user) || esc.prefix == "" {
		return ""
	}
	return esc.prefix + " "
}

// viaAgent reports whether user's root commands are the host agent's
// operations.
func (e escalation) viaAgent(user string) bool { return e.agentPrefix(user) != "" }

// agentPrefix is what goes before an agent operation for user: the
// privilege command ending with the agent's path for a non-root login,
// the agent's store path for root; "" when user's root commands are
// not the agent's.
func (e escalation) agentPrefix(user string) string {
	switch {
	case NeedsPrivilege(user) && e.agent:
		return sudoPrefix(user, e)
	case !NeedsPrivilege(user) && e.installed != "":
		return "sh " + shell.Quote(e.installed) + " "
	}
	return ""
}

// program is `sh -c PROGRAM nix-hive ARGS...`, as root when root is set:
// for a non-root login through its privilege command, and through the
// host agent's operation for the program where the host has the agent.
func program(prog string, root bool, user string, esc escalation, args ...string) string {
	argv := append([]string{"sh", "-c", compact(prog), "nix-hive"}, args...)
	if !root {
		return shell.QuoteArgs(argv)
	}
	if op, ok := agentOps[prog]; ok && esc.viaAgent(user) {
		return esc.agentPrefix(user) + shell.QuoteArgs(append([]string{op}, args...))
	}
	return sudoPrefix(user, esc) + shell.QuoteArgs(argv)
}

// asLogin is prog with args, run as the login.
func asLogin(prog string, args ...string) string {
	return program(prog, false, "", escalation{}, args...)
}

// asRoot is prog with args, run as root on in: through priv's way for a
// login that is not root.
func asRoot(in *eval.Instance, priv *Privilege, prog string, args ...string) string {
	return program(prog, true, in.User, priv.forHost(in.Name), args...)
}
