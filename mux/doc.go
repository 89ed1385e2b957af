// Package mux is the connection holder behind `nix-hive mux` (like
// OpenSSH's ControlPersist): a background process that keeps a transport
// pool's connections, and each host's sftp session, open between
// commands. Commands reach it over a Unix socket that only its user can
// reach, speaking SSH there too: each channel a command opens names the
// instance it is for, and the holder opens the same channel on its
// connection to that instance and relays it. A command through the
// holder thus costs each host a session but no new connection (a key
// exchange, a login, sshd's privilege separation), and reads a host's
// state files over the held sftp session without starting any process
// there.
//
// The package owns all of it: the socket's directory and name and the
// holder's config (mux.go), the record it keeps of itself (records.go),
// the server (server.go), the client a pool goes through (client.go, a
// transport.Holder), and starting one in the background (spawn.go), with
// the command line the caller gives it. transport knows a holder only as
// that interface; this package never decides how a host is reached.
//
// A holder belongs to a hive (transport.Config.Hive, its directory): the
// socket's name is a hash of it, and its record says which version of the
// hive's endpoints and client policy the holder serves. A command that
// finds the hive changed retires the holder (it lets go of the socket and
// ends when the commands using it do) and goes on without it, or with a
// new one.
package mux
