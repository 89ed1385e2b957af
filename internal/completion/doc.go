// Package completion writes nix-hive's bash, zsh and fish completion
// scripts from its kong command model, and the hive's names the scripts
// ask nix-hive for on Tab.
//
// The scripts are text/template files (bash.sh, zsh.zsh, fish.fish) filled
// with the commands, flags and arguments of the model, so that a new
// command, flag or enum value completes without anyone editing them. They
// do the shells' part themselves (splitting the line as nix-hive will get
// it: @tag, @env=prod, instance:path and --flag=value are one word each),
// and ask the program only for what the hive knows, by running
//
//	PROG completion SHELL --complete=KIND [--config=HIVE]
//
// with KIND "targets" or "instances" (see Names), and HIVE the value of
// the flag Options.Config names, when the line has one. docs/design.md
// says why this is not willabides/kongplete.
//
// It owns the scripts and that interface. It must not evaluate a hive nor
// import cli: the model and the hive's names are given to it.
package completion
