package lab

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
)

// Check reports what this machine lacks to run a lab; nil means nothing.
func Check() error {
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root (hosts need mount, pid and network namespaces)")
	}
	for _, f := range []string{sshdPath, sftpServerPath, "/usr/bin/nix", "/proc/self/ns/pid", "/proc/self/ns/net"} {
		if _, err := os.Stat(f); err != nil {
			missing = append(missing, f)
		}
	}
	// Each host mounts its own directories over these.
	for _, o := range overlays {
		if fi, err := os.Stat(o.inHost); err != nil || !fi.IsDir() {
			missing = append(missing, "directory "+o.inHost)
		}
	}
	for _, c := range []string{"nsenter", "ip", "mount", "umount", "awk", "ssh", "nft", "flock", "setsid"} {
		if _, err := exec.LookPath(c); err != nil {
			missing = append(missing, c)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("the lab needs %s", strings.Join(missing, ", "))
	}
	return nil
}
