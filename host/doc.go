// Package host owns every program nix-hive runs on a host, and as whom it
// runs it. The programs are fixed shell scripts sent as `sh -c PROGRAM
// nix-hive ARG...` (names, paths and keys only ever arrive as quoted
// arguments): the query of what a host runs (also read as files over
// sftp: ReadState), the deploy lock (Lock), the detached activation job
// (job.sh) with its start, follow, confirmation and the marks of its
// checks (Jobs), the reboot, a consumer's substitution from its store and
// the repair of a store's refused copy, a store's closure, and the
// programs of key uploads (their owners; the shell way of writing one).
// As whom: NeedsPrivilege says whether a login is root, and Privilege how
// the others become root (the privilege command, sudo's password on
// stdin, the nix-hive agent, whose script AgentScript prints these same
// programs as its operations).
//
// This package decides what runs on one host and reads what it answers;
// it must not decide what a rollout does with the answer: it imports
// neither the executor (deploy) nor the plan, knows no events, results or
// hive.state, and fans out to no fleet (that is deploy's). The keys
// package asks it for its programs; it does not import keys.
package host
