// Package eval talks to Nix about a hive: it locates the hive definition,
// evaluates its inventory in one call, builds the unique systems of a
// deployment in one `nix-store --realise`, keeps GC roots for them, signs
// what it built and asks the local store which paths are valid.
//
// It owns: where the hive is (Locate), its inventory and every check of it
// (lib/hive.nix's, and package endpoint's rules applied when it is read),
// building, signing and GC-rooting its systems, where the signing key
// lives and how one is made, and recording builds in hive.state (Hive.Paths
// reads and writes it, so that --no build can reuse a build).
//
// It must not contact a host, nor decide what a deploy does with the
// systems it builds.
package eval
