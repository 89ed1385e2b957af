package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/nix-hive/nix-hive/eval"
	"github.com/nix-hive/nix-hive/transport"
)

// Fleet flags are shared by every command that connects to instances.
type Fleet struct {
	AcceptNewHostKeys bool          `help:"Record and accept host keys of instances with neither a pinned hostKey nor a known_hosts entry (a changed key is still refused)."`
	ConnectTimeout    time.Duration `default:"10s" help:"Limit for connecting to one host (TCP and SSH handshake, per hop); a connection silent for 3 times as long is given up."`
}

// transportConfig derives SSH endpoints from the inventory and the fleet
// flags.
func transportConfig(inv *eval.Inventory, f Fleet) transport.Config {
	eps := make(map[string]transport.Endpoint, len(inv.Instances))
	for name, in := range inv.Instances {
		opts := map[string]string{}
		for k, v := range in.SSH {
			opts[k] = fmt.Sprint(v)
		}
		eps[name] = transport.Endpoint{Name: name, Host: in.Host, Port: in.Port, User: in.User,
			HostKeys: in.HostKeys, Jump: in.Jump, Options: opts}
	}
	// One bound for everything: connecting, and silence on an open
	// connection (keepalives every ConnectTimeout, dead after 3 missed),
	// for the Go client and the OpenSSH config handed to nix copy alike.
	return transport.Config{Endpoints: eps, AcceptNewHostKeys: f.AcceptNewHostKeys, ConnectTimeout: f.ConnectTimeout,
		KeepAlive: f.ConnectTimeout, KeepAliveTimeout: 3 * f.ConnectTimeout}
}

// pool opens the connection pool for the hive (connections are made on
// first use, one per host).
func (g *Globals) pool(ctx context.Context, f Fleet) (*transport.Pool, *eval.Inventory, error) {
	inv, err := g.inventory(ctx)
	if err != nil {
		return nil, nil, err
	}
	p, err := transport.NewPool(transportConfig(inv, f))
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
func writeSSHConfig(inv *eval.Inventory, f Fleet) (path string, cleanup func(), err error) {
	dir, err := os.MkdirTemp("", "nix-hive-ssh-")
	if err != nil {
		return "", nil, fmt.Errorf("ssh config: %w", err)
	}
	cleanup = func() { os.RemoveAll(dir) }
	cfg := transportConfig(inv, f)
	cfg.BatchMode = true // nix copy's ssh has no one to ask for a password
	kh := filepath.Join(dir, "known_hosts")
	path = filepath.Join(dir, "ssh_config")
	err = writeFile(kh, func(w io.Writer) error { return transport.WriteKnownHosts(w, cfg) })
	if err == nil {
		err = writeFile(path, func(w io.Writer) error { return transport.WriteSSHConfig(w, cfg, kh) })
	}
	if err != nil {
		cleanup()
		return "", nil, err
	}
	return path, cleanup, nil
}

// writeFile writes path atomically (a temporary file renamed into place)
// with what write produces.
func writeFile(path string, write func(io.Writer) error) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+"-")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(f.Name())
	if err := write(f); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return os.Rename(f.Name(), path)
}
