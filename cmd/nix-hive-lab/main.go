// Command nix-hive-lab starts a local lab of throwaway SSH hosts, each with
// its own Nix store, for nix-hive's demo and for trying it by hand.
package main

import "os"

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}
