package scp_test

import (
	"context"
	"log"

	"github.com/nix-hive/nix-hive/scp"
	"github.com/nix-hive/nix-hive/transport"
)

// A directory goes to www-1 over the sftp session of the pool's one
// connection to it, which commands on www-1 share.
func Example() {
	pool, err := transport.NewPool(transport.Config{
		Endpoints: map[string]transport.Endpoint{
			"www-1": {Host: "10.22.0.8", HostKeys: []string{"ssh-ed25519 AAAA..."}},
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()

	if err := scp.Copy(context.Background(), pool, "./site", "www-1:/var/www", true, nil); err != nil {
		log.Fatal(err)
	}
}
