// Package keys puts secrets (keys) on instances. A key's value comes from
// text in the hive, a file on this machine or a command run here; it is
// read when it is uploaded, and goes to the host over the pooled SSH
// connection: sftp into a private directory beside its destination, or,
// where sftp is off or the login is not root, a shell program that reads
// it from stdin. It never enters a Nix store, a log, an event, hive.state,
// an error message or a command line, nor a file on this machine.
//
// Keys are bounded: a command runs for a limited time (the key's timeout,
// else the run's), and a value held in memory (a text, a command's
// output) may hold at most MaxValue bytes, refused as soon as it has one
// more. A file's value has no limit: it is streamed from the file to each
// host, never held whole.
//
// It owns a key's value and its bounds, and how the value reaches a host.
// It must not decide which hosts get which keys (the hive and deploy do),
// nor let a value reach anything but the host it is for.
package keys
