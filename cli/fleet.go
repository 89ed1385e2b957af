package cli

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/nix-hive/nix-hive/eval"
	"github.com/nix-hive/nix-hive/transport"
)

// Fleet flags are shared by every command that connects to instances.
type Fleet struct {
	AcceptNewHostKeys bool          `help:"Record and accept host keys of instances with neither a pinned hostKey nor a known_hosts entry (a changed key is still refused)."`
	ConnectTimeout    time.Duration `default:"10s" help:"Limit for connecting to one host (TCP and SSH handshake, per hop)."`
}

// transportConfig derives SSH endpoints from the inventory.
func transportConfig(inv *eval.Inventory, acceptNew bool) transport.Config {
	return transportConfigFor(inv, Fleet{AcceptNewHostKeys: acceptNew})
}

func transportConfigFor(inv *eval.Inventory, f Fleet) transport.Config {
	acceptNew := f.AcceptNewHostKeys
	eps := make(map[string]transport.Endpoint, len(inv.Instances))
	for name, in := range inv.Instances {
		opts := map[string]string{}
		for k, v := range in.SSH {
			opts[k] = fmt.Sprint(v)
		}
		eps[name] = transport.Endpoint{Name: name, Host: in.Host, Port: in.Port, User: in.User,
			HostKeys: in.HostKeys, Jump: in.Jump, Options: opts}
	}
	return transport.Config{Endpoints: eps, AcceptNewHostKeys: acceptNew, ConnectTimeout: f.ConnectTimeout}
}

// pool opens the connection pool for the hive (connections are made on
// first use, one per host).
func (g *Globals) pool(ctx context.Context, f Fleet) (*transport.Pool, *eval.Inventory, error) {
	inv, err := g.inventory(ctx)
	if err != nil {
		return nil, nil, err
	}
	p, err := transport.NewPool(transportConfigFor(inv, f))
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", g.src.File, err)
	}
	for _, w := range p.Warnings() {
		fmt.Fprintf(g.stderr, "nix-hive: warning: %s\n", w)
	}
	return p, inv, nil
}

// writeSSHConfig writes the generated OpenSSH config and known_hosts into
// a private temporary directory for tools that run ssh themselves (nix
// copy); cleanup removes it.
func writeSSHConfig(inv *eval.Inventory, acceptNew bool) (path string, cleanup func(), err error) {
	dir, err := os.MkdirTemp("", "nix-hive-ssh-")
	if err != nil {
		return "", nil, fmt.Errorf("ssh config: %w", err)
	}
	cleanup = func() { os.RemoveAll(dir) }
	cfg := transportConfig(inv, acceptNew)
	kh := filepath.Join(dir, "known_hosts")
	khf, err := os.Create(kh)
	if err != nil {
		cleanup()
		return "", nil, fmt.Errorf("ssh config: %w", err)
	}
	if err := transport.WriteKnownHosts(khf, cfg); err != nil {
		khf.Close()
		cleanup()
		return "", nil, err
	}
	khf.Close()
	path = filepath.Join(dir, "ssh_config")
	cf, err := os.Create(path)
	if err != nil {
		cleanup()
		return "", nil, fmt.Errorf("ssh config: %w", err)
	}
	defer cf.Close()
	if err := transport.WriteSSHConfig(cf, cfg, kh); err != nil {
		cleanup()
		return "", nil, err
	}
	return path, cleanup, nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
