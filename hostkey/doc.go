// Package hostkey decides which host keys are accepted for an instance:
// the check every SSH handshake of the transport pool makes before it
// logs in.
//
// It owns that decision (Policy, its Callback): an instance's pinned keys
// (the hive's hostKey), and nothing else, when it has any; otherwise a
// host certificate signed by one of the hive's hostCAs (ParseCAs) or by
// an @cert-authority of the known_hosts files and naming the instance's
// HostName, or a key those files hold for its address or its alias, with
// @revoked lines refused outright. A key that matches none of them is
// refused (Error, matching ErrUnknown) unless the run accepts new keys;
// then it is recorded under the instance's alias in the file accepted
// keys go to (nix-hive's is the hive's .nix-hive/known_hosts), so that
// the next run knows it. A key that differs from a known one is always
// refused (ErrMismatch). There is no silent trust on first use. It also
// owns how a refusal reads: the fingerprint, where the expected keys came
// from, and the hostKey line to pin (AuthorizedKey).
//
// It must not dial, read the hive or decide addresses: its caller
// (transport.Hosts) says which names, files, pins and authorities apply
// to an instance and hands the callback to the handshake. It imports no
// package of nix-hive.
package hostkey
