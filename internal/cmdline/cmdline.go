package cmdline

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/alecthomas/kong"
)

// Exit statuses. Usage errors are 2, like most Unix tools; an interrupted
// run is 130 as after SIGINT in a shell.
const (
	OK          = 0
	Failure     = 1
	Usage       = 2
	Interrupted = 130
	// SSHFailure is OpenSSH's status for its own failures (no connection),
	// which nix-hive ssh keeps; otherwise it exits with the remote's.
	SSHFailure = 255
)

// Contract says what each exit status means, for every command: the
// README and --help show it, and the tests hold every command to it.
var Contract = []struct {
	Code    int
	Meaning string
}{
	{OK, "success"},
	{Failure, "a host failed or could not be reached; or deploy --confirm was declined (nothing was done)"},
	{Usage, "a usage error (an unknown flag, flags that contradict, no hive where -c points, a tool the command line needs is missing) or a mistake in the hive (an unknown attribute, an expression that does not evaluate, a target or instance that matches nothing, with a did-you-mean, a refused value)"},
	{Interrupted, "interrupted (Ctrl-C, SIGTERM)"},
	{SSHFailure, "ssh only: it could not connect or lost the connection, as OpenSSH; otherwise ssh exits with the remote command's status"},
}

// ContractText is Contract as lines of "CODE  meaning".
func ContractText() string {
	var b strings.Builder
	for _, c := range Contract {
		fmt.Fprintf(&b, "%4d  %s\n", c.Code, c.Meaning)
	}
	return b.String()
}

// ExitError carries an exit status a command chose (ssh passing the
// remote one through, say); nothing more is printed.
type ExitError struct {
	Code int
	// Err, if set, is printed before exiting with Code (ssh's own
	// failures: 255 and why).
	Err error
}

func (e ExitError) Error() string {
	if e.Err != nil {
		return e.Err.Error()
	}
	return fmt.Sprintf("exit status %d", e.Code)
}

func (e ExitError) Unwrap() error { return e.Err }

// UsageError is a command line that cannot work (contradicting flags).
type UsageError struct{ Err error }

func (e UsageError) Error() string { return e.Err.Error() }
func (e UsageError) Unwrap() error { return e.Err }

// Program is a command tree and how to run it.
type Program struct {
	Name    string
	Tree    any // the kong grammar: a pointer to a struct of commands
	Options []kong.Option
	// Validate, if set, checks the parsed flags; its error is a usage
	// error.
	Validate func() error
	// Message, if set, turns an error into what is printed (to strip
	// wrapping that means nothing to a user).
	Message func(error) string
	// IsUsage, if set, picks out errors that exit with Usage besides
	// UsageError: mistakes in the program's input files, say.
	IsUsage func(error) bool
}

// Main parses args, runs the selected command with ctx bound as
// context.Context and returns the exit status.
func (p Program) Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	exitCode := -1
	opts := append([]kong.Option{
		kong.Name(p.Name),
		kong.UsageOnError(),
		kong.Writers(stdout, stderr),
		kong.Exit(func(code int) { exitCode = code }),
		kong.BindTo(ctx, (*context.Context)(nil)),
	}, p.Options...)
	parser, err := kong.New(p.Tree, opts...)
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", p.Name, err)
		return Failure
	}
	if len(args) == 0 {
		// The program alone: what it can do, not an error about what is
		// missing.
		args = []string{"--help"}
	}
	kctx, err := parser.Parse(args)
	if exitCode >= 0 {
		return exitCode // --help, --version
	}
	if err == nil && p.Validate != nil {
		err = p.Validate()
	}
	if err != nil {
		return p.Status(ctx, UsageError{err}, stderr)
	}
	return p.Status(ctx, kctx.Run(), stderr)
}

// Status maps err onto an exit status, printing it unless the command
// chose its status itself.
func (p Program) Status(ctx context.Context, err error, stderr io.Writer) int {
	msg := func() string {
		if p.Message != nil {
			return p.Message(err)
		}
		return err.Error()
	}
	var ee ExitError
	switch {
	case err == nil:
		return OK
	case errors.As(err, &ee) && ctx.Err() != nil && ee.Code != OK:
		// A command that summarised its hosts (the interrupted ones among
		// them) still ends as interrupted: a script must tell Ctrl-C from
		// a failed host.
		if ee.Err != nil {
			fmt.Fprintf(stderr, "%s: interrupted: %s\n", p.Name, msg())
		} else {
			fmt.Fprintf(stderr, "%s: interrupted\n", p.Name)
		}
		return Interrupted
	case errors.As(err, &ee):
		if ee.Err != nil {
			fmt.Fprintf(stderr, "%s: %s\n", p.Name, msg())
		}
		return ee.Code
	case errors.As(err, new(UsageError)) || p.IsUsage != nil && p.IsUsage(err) && ctx.Err() == nil:
		fmt.Fprintf(stderr, "%s: %s\n", p.Name, msg())
		return Usage
	case errors.Is(err, context.Canceled) || ctx.Err() != nil:
		fmt.Fprintf(stderr, "%s: interrupted: %s\n", p.Name, msg())
		return Interrupted
	default:
		fmt.Fprintf(stderr, "%s: %s\n", p.Name, msg())
		return Failure
	}
}

// Interrupts turns SIGINT and SIGTERM into the root context's
// cancellation (the first) and a closed abort channel (the second); a
// third one kills the program, as without a handler. stop releases the
// signals.
func Interrupts() (ctx context.Context, abort <-chan struct{}, stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	ab := make(chan struct{})
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	done := make(chan struct{})
	go func() {
		for i := 0; i < 2; i++ {
			select {
			case <-sigs:
			case <-done:
				return
			}
			if i == 0 {
				cancel()
				continue
			}
			close(ab)
			signal.Stop(sigs)
		}
	}()
	return ctx, ab, func() {
		signal.Stop(sigs)
		close(done)
		cancel()
	}
}
