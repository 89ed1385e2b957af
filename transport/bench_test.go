package transport

import (
	"context"
	"testing"
	"time"

	"github.com/nix-hive/nix-hive/lab"
	"github.com/nix-hive/nix-hive/lab/labtest"
)

// benchRun runs b.N commands twice, over one pooled connection and with a
// new connection per command (what tools that shell out to ssh do), and
// reports the pooled speed-up measured in the same run plus the pooled
// dials per host.
func benchRun(b *testing.B, cfg Config, name string) {
	ctx := context.Background()
	if cfg.UserConfig == "" {
		cfg.UserConfig = "none"
	}
	one := func(p *Pool) {
		if code, err := p.Run(ctx, name, "true", nil, nil, nil); err != nil || code != 0 {
			b.Fatalf("Run = %d, %v", code, err)
		}
	}
	b.ResetTimer()
	start := time.Now()
	for range b.N {
		p, err := NewPool(cfg)
		if err != nil {
			b.Fatal(err)
		}
		one(p)
		p.Close()
	}
	perDial := time.Since(start)

	p, err := NewPool(cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close()
	start = time.Now()
	for range b.N {
		one(p)
	}
	pooled := time.Since(start)
	b.ReportMetric(float64(perDial)/float64(pooled), "x-faster-than-dial-per-command")
	b.ReportMetric(float64(p.Stats().Dials[name]), "dials-pooled")
}

// BenchmarkRunInProcess needs no root; its dial is cheaper than sshd's
// (no fork per connection), so the ratio understates the real gain.
func BenchmarkRunInProcess(b *testing.B) {
	b.Setenv("HOME", b.TempDir())
	b.Setenv("SSH_AUTH_SOCK", "")
	key := newClientKey(b)
	srv := newTestServer(b, key.signer.PublicKey())
	benchRun(b, Config{Endpoints: map[string]Endpoint{"a": srv.endpoint("a", key)}, KnownHostsFiles: []string{}}, "a")
}

// BenchmarkRunLab measures against real sshd hosts.
func BenchmarkRunLab(b *testing.B) {
	b.Setenv("HOME", b.TempDir())
	b.Setenv("SSH_AUTH_SOCK", "")
	l := labtest.New(b, lab.Config{Hosts: 1})
	benchRun(b, Config{Endpoints: labEndpoints(l, true), KnownHostsFiles: []string{}}, l.Hosts[0].Name)
}
