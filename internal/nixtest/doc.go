// Package nixtest prepares tests that run the real nix: it checks that nix
// is installed and gives the environment every such test uses.
// It must not be imported by anything but tests.
package nixtest
