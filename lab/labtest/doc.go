// Package labtest starts labs for tests: the part of the lab that needs
// the testing package, kept out of the nix-hive-lab binary.
// It must not be imported by anything but tests.
package labtest
