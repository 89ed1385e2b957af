// Package cli is nix-hive's command tree, one command per file. Each
// command's Run maps flags onto calls into the packages that do the work
// and renders what they return; what a command needs (the hive, the state
// file, the policy, the connection pool) is provided on demand (see
// providers.go), so --help or keygen never evaluate a hive or connect.
//
// It owns: the flags and their defaults, what is printed (tables, JSON,
// the progress bar and who else may draw on the terminal, every warning
// through Globals.warnf), when a command asks before acting (--confirm),
// how a pool is made and whether it goes through a connection holder
// (newPool, openPool), and the command line a holder runs with.
//
// It must not decide what happens on a host or to a plan: which programs
// run where and as whom is package host's, what a rollout does is plan's
// and deploy's, how an instance is reached is transport's. Exit statuses
// are internal/cmdline's Contract; completion scripts and the manual page
// are rendered by internal/completion and internal/manpage from the
// command model this package declares.
package cli
