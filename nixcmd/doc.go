// Package nixcmd runs the nix command-line tools: every call nix-hive makes
// to Nix goes through here, so flags, environment and error reporting are
// the same everywhere and work on Nix 2.8 as well as on current releases.
//
// It owns every command line given to a Nix tool and every reading of a
// Nix tool's output, in each release's form. It must not know hives or
// hosts.
package nixcmd
