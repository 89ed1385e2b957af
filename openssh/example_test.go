package openssh_test

import (
	"log"

	"github.com/nix-hive/nix-hive/openssh"
	"github.com/nix-hive/nix-hive/transport"
)

// The OpenSSH files for a pool's instances, for ssh -F and NIX_SSHOPTS:
// ssh then reaches www-1 through portico, checking the pinned key, as
// the pool does.
func Example() {
	pool, err := transport.NewPool(transport.Config{
		Endpoints: map[string]transport.Endpoint{
			"portico": {Host: "203.0.113.4", HostKeys: []string{"ssh-ed25519 AAAA..."}},
			"www-1":   {Host: "10.22.0.8", Jump: "portico"},
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()
	if err := openssh.Write(pool.Hosts(), "ssh_config", "known_hosts"); err != nil {
		log.Fatal(err)
	}
}
