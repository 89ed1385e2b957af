package transport_test

import (
	"context"
	"fmt"
	"log"
	"os"

	"github.com/nix-hive/nix-hive/shell"
	"github.com/nix-hive/nix-hive/transport"
)

// A pool reaches www-1 through portico; both connections are made once and
// reused by every call until Close.
func Example() {
	ctx := context.Background()
	cfg := transport.Config{
		Endpoints: map[string]transport.Endpoint{
			"portico": {Host: "203.0.113.4", HostKeys: []string{"ssh-ed25519 AAAA..."}},
			"www-1": {Host: "10.22.0.8", Jump: "portico",
				Options: map[string]string{"IdentityFile": "~/.ssh/fleet"}},
		},
	}
	pool, err := transport.NewPool(cfg)
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()

	cmd := shell.QuoteArgs([]string{"systemctl", "is-active", "nginx.service"})
	code, err := pool.Run(ctx, "www-1", cmd, nil, os.Stdout, os.Stderr)
	if err != nil {
		log.Fatal(err) // could not run it: connection, host key, auth, ctx
	}
	fmt.Println("exit status", code)
}
