// Package state reads and writes hive.state, the cache of what nix-hive last
// built and deployed. It is never the source of truth: the hive and the
// hosts are; hive.state only lets `--no build,push` resume.
//
// It owns hive.state's format, its merging between concurrent runs and
// its locking. It must not decide what a host runs: the host says that.
package state
