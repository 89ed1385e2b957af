// Command nix-hive deploys NixOS systems to fleets of hosts.
package main

import (
	"os"

	"github.com/nix-hive/nix-hive/cli"
)

// version and revision are set by the linker: -X main.version=0.1.0
// -X main.revision=<commit> ("<commit>-dirty" for a tree with
// uncommitted changes), as package.nix does. A go build in a git clone
// needs no revision: the toolchain records the commit itself, unless
// -buildvcs=false or the source has no .git (a tarball, a git worktree).
var (
	version  = "dev"
	revision = ""
)

func main() {
	os.Exit(cli.Main(cli.Stamp(version, revision), os.Args[1:], os.Stdout, os.Stderr))
}
