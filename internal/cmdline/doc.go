// Package cmdline runs a kong command tree the way both of nix-hive's
// programs do: one signal-aware root context, parse, run, and one mapping
// of errors onto exit statuses.
// It owns the exit-status contract (Contract) and interrupts; it must not
// know nix-hive's commands.
package cmdline
