package cli

import (
	"errors"
	"io"
	"os"
	"sync"

	"github.com/alecthomas/kong"

	"github.com/nix-hive/nix-hive/eval"
	"github.com/nix-hive/nix-hive/internal/cmdline"
)

// CLI is the command tree.
type CLI struct {
	Globals

	Build      BuildCmd      `cmd:"" help:"Build each unique system of the targets once; print the inventory as JSON." group:"Deploy"`
	Plan       PlanCmd       `cmd:"" help:"Show what deploy would do: systems, transfers, waves, what changes on the hosts. Changes nothing." group:"Deploy"`
	Deploy     DeployCmd     `cmd:"" help:"Build, push to stores, substitute, activate and check, in waves." group:"Deploy"`
	ApplyLocal ApplyLocalCmd `cmd:"" name:"apply-local" help:"Build this machine's system and activate it here, without SSH." group:"Deploy"`
	Status     StatusCmd     `cmd:"" help:"Compare each instance's active system with what the hive wants." group:"Deploy"`
	Rollback   RollbackCmd   `cmd:"" help:"Switch instances back to their previous generation." group:"Deploy"`
	Eval       EvalCmd       `cmd:"" help:"Evaluate an expression against the hive, or an attribute of an instance's system; print JSON." group:"Deploy"`
	Run        RunCmd        `cmd:"" help:"Run a command on many instances in parallel." group:"Fleet"`
	SSH        SSHCmd        `cmd:"" name:"ssh" help:"Open a shell or run a command on one instance." group:"Fleet"`
	SCP        SCPCmd        `cmd:"" name:"scp" help:"Copy files to or from instances (instance:path) over sftp." group:"Fleet"`
	SSHConfig  SSHConfigCmd  `cmd:"" name:"ssh-config" help:"Print an OpenSSH config for the hive (extends ~/.ssh/config)." group:"Fleet"`
	Keys       KeysCmd       `cmd:"" help:"List or upload the hosts' keys (secrets)." group:"Fleet"`
	Mux        MuxCmd        `cmd:"" help:"Hold every instance's SSH connection open between commands (start, stop, check)." group:"Fleet"`
	Agent      AgentCmd      `cmd:"" help:"Print nix-hive-agent, the privileged steps for hosts whose login is not root." group:"Setup"`
	Keygen     KeygenCmd     `cmd:"" help:"Create the hive's signing key pair." group:"Setup"`
	Completion CompletionCmd `cmd:"" help:"Print shell completion for bash, zsh or fish." group:"Setup"`
	Man        ManCmd        `cmd:"" help:"Print nix-hive's manual page (roff)." group:"Setup"`
}

// Main runs nix-hive with args and returns the exit status: 0 success, 1
// failure, 2 usage error, 130 interrupted.
func Main(version string, args []string, stdout, stderr io.Writer) int {
	ctx, abort, stop := cmdline.Interrupts()
	defer stop()
	var cli CLI
	g := &cli.Globals
	// Many goroutines (hosts, policy checks, progress) write; each write
	// must land whole. The raw stderr is kept to detect a terminal.
	g.stdout, g.stderr, g.stderrRaw, g.abort = &syncWriter{w: stdout}, &syncWriter{w: stderr}, stderr, abort
	g.stdin = os.Stdin
	defer g.close()
	return cmdline.Program{
		Name: "nix-hive",
		Tree: &cli,
		Options: append([]kong.Option{
			kong.Description("Deploy a handful of NixOS systems to fleets of hosts.\n\nExit status, for every command:\n" + cmdline.ContractText()),
			kong.Vars{"version": "nix-hive " + versionString(version)},
			kong.ConfigureHelp(kong.HelpOptions{Compact: true}),
			kong.Bind(g),
		}, providers()...),
		Message: message,
		IsUsage: func(err error) bool { return errors.Is(err, eval.ErrHive) },
	}.Main(ctx, args, stdout, stderr)
}

// message is what is printed for err: a provider's error without the
// type names kong wraps it in.
func message(err error) string {
	var pe providerError
	if errors.As(err, &pe) {
		return pe.err.Error()
	}
	return err.Error()
}

// syncWriter serialises writes to w.
type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}
