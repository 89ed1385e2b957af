package cli

import "context"

// RunCmd is `nix-hive run`.
type RunCmd struct {
	Targets string   `arg:"" help:"Instance name glob or @tag glob."`
	Command []string `arg:"" passthrough:"" help:"Command to run (after --)."`
}

func (c *RunCmd) Run(ctx context.Context, g *Globals) error { return notImplemented("run") }

// SSHCmd is `nix-hive ssh`.
type SSHCmd struct {
	Instance string   `arg:"" help:"Instance name."`
	Command  []string `arg:"" optional:"" passthrough:"" help:"Command to run; a login shell when empty."`
}

func (c *SSHCmd) Run(ctx context.Context, g *Globals) error { return notImplemented("ssh") }

// SCPCmd is `nix-hive scp`.
type SCPCmd struct {
	Src string `arg:"" help:"Source: local path or instance:path."`
	Dst string `arg:"" help:"Destination: local path or instance:path."`
}

func (c *SCPCmd) Run(ctx context.Context, g *Globals) error { return notImplemented("scp") }

// SSHConfigCmd is `nix-hive ssh-config`.
type SSHConfigCmd struct{}

func (c *SSHConfigCmd) Run(ctx context.Context, g *Globals) error {
	return notImplemented("ssh-config")
}
