// Package openssh writes the OpenSSH client files for tools that run ssh
// themselves (nix copy, an operator's ssh -F): a config with a Host block
// per instance, and the known_hosts it checks host keys against. Both are
// written from the resolution the transport pool connects with
// (transport.Hosts), never a second one, so that ssh reaches and checks
// every host as nix-hive's own client does. It connects to nothing.
package openssh
