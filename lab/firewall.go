package lab

import (
	"os/exec"
	"strings"
)

// firewall is where a host's stand-in for a NixOS firewall keeps its
// rules: one nft table (inet family) in the network namespace the host's
// sshd listens in, named for the host's address so that hosts sharing a
// namespace never touch each other's rules. It is apart from Host because
// it is reached from both sides and outlives the host's processes:
// lab-service fills it from inside the host, the lab empties it from
// outside on a reboot and at Close.
type firewall struct {
	table string
	netns string // network namespace file; "" for this machine's
}

func newFirewall(addr, netns string) firewall {
	return firewall{
		table: "nixhive_lab_" + strings.NewReplacer(".", "_", ":", "_").Replace(addr),
		netns: netns,
	}
}

// open removes the host's blocking rules, if any (lab-service
// firewall-block-ssh), from this machine's side.
func (f firewall) open() {
	args := []string{"delete", "table", "inet", f.table}
	if f.netns != "" {
		args = append([]string{"--net=" + f.netns, "--", "nft"}, args...)
		exec.Command("nsenter", args...).Run()
		return
	}
	exec.Command("nft", args...).Run()
}
