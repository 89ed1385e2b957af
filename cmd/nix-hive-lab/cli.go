package main

import (
	"io"

	"github.com/alecthomas/kong"

	"github.com/nix-hive/nix-hive/internal/cmdline"
)

type cli struct {
	Up   upCmd   `cmd:"" help:"Start a lab and keep it running until SIGINT or SIGTERM."`
	Down downCmd `cmd:"" help:"Stop a lab that 'up' runs in the background."`
}

// run executes nix-hive-lab with args and returns the exit status: 0, 1 on
// failure, 2 on a usage error, 130 when interrupted before the lab was up.
func run(args []string, stdout, stderr io.Writer) int {
	ctx, _, stop := cmdline.Interrupts()
	defer stop()
	return cmdline.Program{
		Name: "nix-hive-lab",
		Tree: &cli{},
		Options: []kong.Option{
			kong.Description("Start throwaway SSH hosts on this machine, each with its own Nix store (needs root)."),
			kong.BindTo(stdout, (*io.Writer)(nil)),
		},
	}.Main(ctx, args, stdout, stderr)
}
