package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/alecthomas/kong"
)

type cli struct {
	Up   upCmd   `cmd:"" help:"Start a lab and keep it running until SIGINT or SIGTERM."`
	Down downCmd `cmd:"" help:"Stop a lab that 'up' runs in the background."`
}

// run executes nix-hive-lab with args and returns the exit status: 0, 1 on
// failure, 2 on a usage error, 130 when interrupted before the lab was up.
func run(args []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	var c cli
	exitCode := -1
	parser, err := kong.New(&c,
		kong.Name("nix-hive-lab"),
		kong.Description("Start throwaway SSH hosts on this machine, each with its own Nix store (needs root)."),
		kong.UsageOnError(),
		kong.Writers(stdout, stderr),
		kong.Exit(func(code int) { exitCode = code }),
		kong.BindTo(ctx, (*context.Context)(nil)),
		kong.BindTo(stdout, (*io.Writer)(nil)),
	)
	if err != nil {
		fmt.Fprintf(stderr, "nix-hive-lab: %v\n", err)
		return 1
	}
	kctx, err := parser.Parse(args)
	if exitCode >= 0 {
		return exitCode // --help
	}
	if err != nil {
		fmt.Fprintf(stderr, "nix-hive-lab: %v\n", err)
		return 2
	}
	err = kctx.Run()
	switch {
	case err == nil:
		return 0
	case errors.Is(err, context.Canceled):
		fmt.Fprintf(stderr, "nix-hive-lab: interrupted: %v\n", err)
		return 130
	default:
		fmt.Fprintf(stderr, "nix-hive-lab: %v\n", err)
		return 1
	}
}
