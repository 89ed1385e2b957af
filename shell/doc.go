// Package shell quotes words for POSIX shells, so that names, paths and
// arguments reach a remote command exactly as given and run nothing.
// It must not run anything.
package shell
