// Package lab starts throwaway SSH hosts on this machine, each a real sshd
// with its own Nix store, for nix-hive's demo and end-to-end tests.
//
// A host is /usr/sbin/sshd in its own mount, pid and UTS namespaces, listening
// on its own loopback address 127.77.B.N:22, with /nix, /run, /etc/nix and
// /root bind-mounted from its directory; a lab takes as many blocks B as its
// hosts need. With Config.Internal > 0 the lab also makes a network
// namespace whose hosts only a jump host reaches; with Config.Tree, a tree
// of stores (region, racks, consumers) reached through jump chains. Their
// veths take addresses in 198.18.0.0/16, for which every lab start
// installs an unreachable route in this machine's network namespace that
// no lab removes: no packet for a lab address, of a running lab or a
// closed one, leaves this machine. The lab needs root; Require skips (or,
// under CI, fails) a test otherwise.
//
// It owns everything about the lab's hosts and networks, and the faults
// tests inject into them (a host's Faults). It must not be imported by
// nix-hive's own packages: only by tests, benchmarks and nix-hive-lab.
package lab
