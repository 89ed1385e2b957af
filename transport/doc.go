// Package transport connects to hive instances over SSH: pooled
// connections through jump chains with pinned host keys, commands,
// interactive shells and sftp sessions.
//
// It owns the connections (Pool: at most one per endpoint, shared by every
// command, shell and sftp client of a run, kept alive and redialed when
// dead, or a holder's through the Holder interface), the sessions on them
// (Run, Shell, RunFresh, OpenChannel, and stopping a cancelled command's
// process group), sftp (SFTP, with a file's mode in its create request;
// CreatePrivate; Files), and how each instance is reached (Hosts,
// resolved once by NewPool from the hive's endpoints and the user's ssh
// config, including which names, known_hosts files, pins and authorities
// apply to its host key).
//
// It must not decide which host keys are accepted (package hostkey,
// whose check every handshake here makes), write OpenSSH's files for
// other tools (package openssh writes them from Hosts), run the
// connection holder (package mux, known here only as a Holder), or copy
// file trees (package scp, over a pool's SFTP); of these only hostkey is
// imported here. It never builds a shell command from a hive's values
// unquoted: callers quote with package shell, as it does itself (a
// ProxyCommand's tokens).
package transport
