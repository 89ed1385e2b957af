// Package scp is `nix-hive scp`'s semantics over sftp: copying a file or
// a directory tree between this machine and an instance, as cp would
// (into dir/<base> when the destination is an existing directory).
//
// It owns what a copy means: which side an scp-style instance:path names
// (SplitTarget), which mode bits a copy keeps (with set-id and sticky),
// symbolic links copied as links and never followed on the destination,
// read-only directories filled before they get their mode, each file
// written under a temporary name and renamed over its target once
// complete (transport.CreatePrivate on an instance), and the progress
// counted over a whole tree.
//
// It must not dial: the sftp client is the transport pool's, on its one
// connection to the instance (through jump hosts or a holder as the pool
// goes), so that a copy costs the host no login. It must not run a shell
// or any command on a host: everything it does there is an sftp request.
package scp
