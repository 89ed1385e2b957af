// Command nix-hive deploys NixOS systems to fleets of hosts.
package main

import (
	"os"

	"github.com/nix-hive/nix-hive/cli"
)

// version is set by the linker (-X main.version=...).
var version = "dev"

func main() {
	os.Exit(cli.Main(version, os.Args[1:], os.Stdout, os.Stderr))
}
