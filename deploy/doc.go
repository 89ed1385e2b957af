// Package deploy carries out a rollout and works on fleets. The executor
// (Execute, Deploy, ApplyLocal) takes a plan (package plan) to the hosts.
// Its transfers bring every host its closures, all hosts at once, taking
// the targets' deploy locks (hostLocks) on the way; its waves give each
// target its turn in the pipeline (keys, activation, reboot, the
// policy's checks, rollback). Every host ends with a Result and every
// step is an Event, both written to the rollout's journal, and the
// executor settles the outcomes and records them in hive.state. The
// fleet operations ask or change many hosts at once with the same
// programs: Inspect and Watcher (status), Changes (what a plan changes,
// for plan and deploy --confirm), Rollback, UploadKeys.
//
// What runs on a host, and as whom, is package host's: this package
// decides when to run it and what its answer means for the rollout, and
// builds no shell command of its own. What a rollout will do is decided
// before it starts, by plan; the command line (cli) only maps flags onto
// Options.
package deploy
