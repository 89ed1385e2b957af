// Package cli is nix-hive's command tree: it maps flags onto calls into the
// packages that do the work (eval, transport, deploy) and nothing more.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sync"
	"syscall"

	"github.com/alecthomas/kong"
)

// CLI is the command tree.
type CLI struct {
	Globals

	Build     BuildCmd     `cmd:"" help:"Build each unique system of the targets once; print the inventory as JSON." group:"Deploy"`
	Plan      PlanCmd      `cmd:"" help:"Show what deploy would do: systems, transfers, waves. Touches nothing." group:"Deploy"`
	Deploy    DeployCmd    `cmd:"" help:"Build, push to stores, substitute, activate and check, in waves." group:"Deploy"`
	Status    StatusCmd    `cmd:"" help:"Compare each instance's active system with what the hive wants." group:"Deploy"`
	Rollback  RollbackCmd  `cmd:"" help:"Switch instances back to their previous generation." group:"Deploy"`
	Run       RunCmd       `cmd:"" help:"Run a command on many instances in parallel." group:"Fleet"`
	SSH       SSHCmd       `cmd:"" name:"ssh" help:"Open a shell or run a command on one instance." group:"Fleet"`
	SCP       SCPCmd       `cmd:"" name:"scp" help:"Copy files to or from instances (instance:path) over sftp." group:"Fleet"`
	SSHConfig SSHConfigCmd `cmd:"" name:"ssh-config" help:"Print an OpenSSH config for the hive (extends ~/.ssh/config)." group:"Fleet"`
	Keygen    KeygenCmd    `cmd:"" help:"Create the hive's signing key pair." group:"Setup"`
}

// Exit codes. Usage errors and unimplemented commands share 2, like most
// Unix tools; an interrupted run is 130 as after SIGINT in a shell.
const (
	exitOK          = 0
	exitFailure     = 1
	exitUsage       = 2
	exitInterrupted = 130
)

// exitError carries an exit status chosen by a command (e.g. `ssh` passing
// through the remote status) without printing anything more.
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

// usageError is a command line that cannot work (contradicting flags):
// exit status 2, like a parse error.
type usageError struct{ error }

func (e usageError) Unwrap() error { return e.error }

// Main runs nix-hive with args and returns the exit status.
func Main(version string, args []string, stdout, stderr io.Writer) int {
	ctx, abort, stop := interrupts()
	defer stop()

	var cli CLI
	exitCode := -1
	parser, err := kong.New(&cli,
		kong.Name("nix-hive"),
		kong.Description("Deploy a handful of NixOS systems to fleets of hosts."),
		kong.UsageOnError(),
		kong.Writers(stdout, stderr),
		kong.Exit(func(code int) { exitCode = code }),
		kong.Vars{"version": version},
		kong.BindTo(ctx, (*context.Context)(nil)),
		kong.ConfigureHelp(kong.HelpOptions{Compact: true}),
	)
	if err != nil {
		fmt.Fprintf(stderr, "nix-hive: %v\n", err)
		return exitFailure
	}
	// Many goroutines (hosts, policy checks, progress) write; each write
	// must land whole. The raw stderr is kept to detect a terminal.
	cli.Globals.stdout, cli.Globals.stderr = &syncWriter{w: stdout}, &syncWriter{w: stderr}
	cli.Globals.stderrRaw = stderr
	cli.Globals.abort = abort
	kctx, err := parser.Parse(args)
	if exitCode >= 0 {
		// --help and --version end parsing through kong.Exit.
		return exitCode
	}
	if err != nil {
		fmt.Fprintf(stderr, "nix-hive: %v\n", err)
		return exitUsage
	}
	if err := cli.Globals.validate(); err != nil {
		fmt.Fprintf(stderr, "nix-hive: %v\n", err)
		return exitUsage
	}
	err = kctx.Run(ctx, &cli.Globals)
	return exitStatus(ctx, err, stderr)
}

// interrupts turns SIGINT and SIGTERM into the root context's
// cancellation (first signal: start nothing new, stop transfers) and a
// closed abort channel (second signal: stop waiting for activations,
// which run on detached on the hosts).
func interrupts() (ctx context.Context, abort <-chan struct{}, stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	ab := make(chan struct{})
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	done := make(chan struct{})
	go func() {
		for i := 0; ; i++ {
			select {
			case <-sigs:
			case <-done:
				return
			}
			switch i {
			case 0:
				cancel()
			case 1:
				close(ab)
				signal.Stop(sigs) // a third one kills, as without a handler
				return
			}
		}
	}()
	return ctx, ab, func() {
		signal.Stop(sigs)
		close(done)
		cancel()
	}
}

func exitStatus(ctx context.Context, err error, stderr io.Writer) int {
	var ee exitError
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &ee):
		return ee.code
	case errors.As(err, new(usageError)):
		fmt.Fprintf(stderr, "nix-hive: %v\n", err)
		return exitUsage
	case errors.Is(err, context.Canceled) || ctx.Err() != nil:
		fmt.Fprintf(stderr, "nix-hive: interrupted: %v\n", err)
		return exitInterrupted
	default:
		fmt.Fprintf(stderr, "nix-hive: %v\n", err)
		return exitFailure
	}
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
