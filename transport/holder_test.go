package transport_test

import (
	"context"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"

	"github.com/nix-hive/nix-hive/lab"
	"github.com/nix-hive/nix-hive/lab/labtest"
	"github.com/nix-hive/nix-hive/mux"
	"github.com/nix-hive/nix-hive/shell"
	"github.com/nix-hive/nix-hive/transport"
)

// These tests go through a real holder (package mux): what a pool does
// with a transport.Holder, tested against the one nix-hive has.

// labHolderConfig is the lab's endpoints, pinned, as a holder's config.
func labHolderConfig(t *testing.T, l *lab.Lab) transport.Config {
	return transport.Config{Endpoints: transport.LabEndpoints(l, true), UserConfig: "none", KnownHostsFiles: []string{},
		AcceptedKnownHosts: filepath.Join(t.TempDir(), "accepted")}
}

// startHolder serves cfg's connections from a holder in this process, on
// a socket in a directory of its own; it ends with the test. done is
// closed when Serve has returned.
func startHolder(t *testing.T, cfg transport.Config) (s *mux.Server, sock string, done <-chan struct{}) {
	t.Helper()
	t.Setenv("XDG_RUNTIME_DIR", t.TempDir())
	if _, err := mux.Dir(true); err != nil {
		t.Fatal(err)
	}
	sock, err := mux.Socket(cfg)
	if err != nil {
		t.Fatal(err)
	}
	s, err = mux.NewServer(cfg, 0, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := s.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	ended := make(chan struct{})
	go func() {
		defer close(ended)
		if err := s.Serve(context.Background(), ln); err != nil {
			t.Errorf("Serve: %v", err)
		}
	}()
	t.Cleanup(func() {
		s.Stop()
		<-ended
	})
	return s, sock, ended
}

// TestHolderLab runs commands and sftp file reads on real sshd hosts
// behind a jump host through a holder, from pools that make no connection
// of their own: the holder's connections serve every pool, a cut one is
// redialed, RunFresh and Reset get new ones, and a stopped holder fails
// commands instead of hanging them.
func TestHolderLab(t *testing.T) {
	transport.Hermetic(t)
	l := labtest.New(t, lab.Config{Internal: 2})
	ctx := transport.TestCtx(t)
	cfg := labHolderConfig(t, l)
	srv, sock, ended := startHolder(t, cfg)
	var internal []*lab.Host
	for _, h := range l.Hosts {
		if h.Jump != "" {
			internal = append(internal, h)
		}
	}
	h1, h2 := internal[0], internal[1]
	client := func(t *testing.T) (*transport.Pool, *mux.Client) {
		t.Helper()
		m, err := mux.Dial(sock, 0)
		if err != nil {
			t.Fatalf("the holder does not answer: %v", err)
		}
		c := cfg
		c.Holder = m
		return transport.NewTestPool(t, c), m
	}
	p, held := client(t)
	made := func() int { return srv.Info().Handshakes }

	t.Run("output, stderr, exit status and stdin", func(t *testing.T) {
		out, errOut, code, err := p.Output(ctx, h1.Name, "echo to-out; echo to-err >&2; exit 7")
		if err != nil || code != 7 || string(out) != "to-out\n" || string(errOut) != "to-err\n" {
			t.Errorf("Output = %q, %q, %d, %v", out, errOut, code, err)
		}
		var got strings.Builder
		code, err = p.Run(ctx, h2.Name, "cat", strings.NewReader("through the holder\n"), &got, nil)
		if err != nil || code != 0 || got.String() != "through the holder\n" {
			t.Errorf("cat = %q, %d, %v", got.String(), code, err)
		}
		// The jump host and both internal hosts: one connection each.
		if n := made(); n != 3 {
			t.Errorf("holder made %d connections; want 3", n)
		}
	})

	t.Run("file reads over the holder's sftp session", func(t *testing.T) {
		transport.TestReader(t, ctx, p, h2)
	})

	t.Run("cancelled command returns and stops remotely", func(t *testing.T) {
		transport.TestCancel(t, ctx, p, h2)
	})

	t.Run("another pool makes no connection", func(t *testing.T) {
		before := made()
		q, _ := client(t)
		for _, h := range l.Hosts {
			out, _, code, err := q.Output(ctx, h.Name, "echo reached "+shell.Quote(h.Name))
			if err != nil || code != 0 || string(out) != "reached "+h.Name+"\n" {
				t.Errorf("Output on %s = %q, %d, %v", h.Name, out, code, err)
			}
		}
		if st := q.Stats(); st.Direct+st.Tunnelled != 0 || made() != before {
			t.Errorf("pool made %d, holder %d new connections; want none", st.Direct+st.Tunnelled, made()-before)
		}
	})

	t.Run("RunFresh gets a connection of its own", func(t *testing.T) {
		before := made()
		var out strings.Builder
		if code, err := p.RunFresh(ctx, h1.Name, "echo fresh", nil, &out, nil); err != nil || code != 0 || out.String() != "fresh\n" {
			t.Errorf("RunFresh = %q, %d, %v", out.String(), code, err)
		}
		if n := made() - before; n != 1 {
			t.Errorf("holder made %d connections for RunFresh; want 1", n)
		}
	})

	t.Run("a cut connection is redialed, Reset drops one", func(t *testing.T) {
		before := made()
		if n, err := h1.Faults().CutConnections(); n == 0 || err != nil {
			t.Fatalf("cut %s: %d, %v", h1.Name, n, err)
		}
		if code, err := p.Run(ctx, h1.Name, "true", nil, nil, nil); err != nil || code != 0 {
			t.Errorf("Run after the cut = %d, %v", code, err)
		}
		p.Reset(h2.Name)
		if code, err := p.Run(ctx, h2.Name, "true", nil, nil, nil); err != nil || code != 0 {
			t.Errorf("Run after Reset = %d, %v", code, err)
		}
		if n := made() - before; n != 2 {
			t.Errorf("holder made %d connections; want 2 (a redial, a reset)", n)
		}
	})

	t.Run("unknown instance", func(t *testing.T) {
		if _, err := p.Run(ctx, "nope", "true", nil, nil, nil); !errors.Is(err, transport.ErrUnknownInstance) {
			t.Errorf("Run on nope = %v; want ErrUnknownInstance", err)
		}
	})

	t.Run("a stopped holder fails commands and removes its socket", func(t *testing.T) {
		if err := held.Stop(); err != nil {
			t.Fatal(err)
		}
		<-ended
		if _, err := p.Run(ctx, h1.Name, "true", nil, nil, nil); err == nil {
			t.Error("Run through a stopped holder succeeded")
		}
		if _, err := os.Stat(sock); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("socket after stop: %v", err)
		}
		if m, err := mux.Dial(sock, 0); err == nil {
			m.Close()
			t.Error("a stopped holder still answers")
		}
		q := transport.NewTestPool(t, cfg)
		if code, err := q.Run(ctx, h1.Name, "true", nil, nil, nil); err != nil || code != 0 {
			t.Errorf("direct Run without the holder = %d, %v", code, err)
		}
	})
}

// A host that refuses the holder's keys (it has no one to ask for a
// passphrase) is logged in to by the command itself when it can ask,
// through the holder's connection to the jump host; a command that cannot
// ask gets the host's refusal.
func TestHolderLoginFallback(t *testing.T) {
	transport.Hermetic(t)
	t.Setenv("SSH_AUTH_SOCK", "") // the key below is in no agent
	l := labtest.New(t, lab.Config{Internal: 1})
	ctx := transport.TestCtx(t)
	cfg := labHolderConfig(t, l)
	var inner *lab.Host
	for _, h := range l.Hosts {
		if h.Jump != "" {
			inner = h
		}
	}
	const pass = "correct horse"
	ep := cfg.Endpoints[inner.Name]
	ep.Options = map[string]string{"IdentityFile": encryptedCopy(t, l.ClientKey, pass)}
	cfg.Endpoints[inner.Name] = ep
	srv, sock, _ := startHolder(t, cfg)

	through := func(c transport.Config) *transport.Pool {
		t.Helper()
		m, err := mux.Dial(sock, 0)
		if err != nil {
			t.Fatal(err)
		}
		c.Holder = m
		return transport.NewTestPool(t, c)
	}
	c := cfg
	asked := 0
	c.Passphrase = func(string) ([]byte, error) { asked++; return []byte(pass), nil }
	p := through(c)
	out, _, code, err := p.Output(ctx, inner.Name, "echo logged in")
	if err != nil || code != 0 || string(out) != "logged in\n" {
		t.Fatalf("Output through the fallback = %q, %d, %v", out, code, err)
	}
	if st := p.Stats(); st.Direct != 0 || st.Tunnelled != 1 || asked != 1 {
		t.Errorf("command made %d direct and %d tunnelled connections and asked %d times; want 0, 1, 1", st.Direct, st.Tunnelled, asked)
	}
	// Only the jump host's connection is the holder's: the tunnel above
	// went through it.
	if info := srv.Info(); info.Connected != 1 || info.Handshakes != 1 {
		t.Errorf("holder holds %d connections, made %d; want 1 and 1 (the jump host)", info.Connected, info.Handshakes)
	}
	f, err := p.Files(ctx, inner.Name)
	if err != nil {
		t.Fatalf("Files through the fallback: %v", err)
	}
	if ok, err := f.Exists("/etc"); !ok || err != nil {
		t.Errorf("file reads through the fallback: Exists(/etc) = %v, %v", ok, err)
	}

	c.Passphrase = nil
	q := through(c)
	_, _, _, err = q.Output(ctx, inner.Name, "true")
	if err == nil || !strings.Contains(err.Error(), "no agent holds it") || !strings.Contains(err.Error(), "through mux") {
		t.Errorf("Output from a command that cannot ask = %v; want the holder's refusal", err)
	}
}

// encryptedCopy writes key (an unencrypted OpenSSH private key file)
// encrypted with pass, and returns its path.
func encryptedCopy(t *testing.T, key, pass string) string {
	t.Helper()
	b, err := os.ReadFile(key)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := ssh.ParseRawPrivateKey(b)
	if err != nil {
		t.Fatal(err)
	}
	block, err := ssh.MarshalPrivateKeyWithPassphrase(raw, "", []byte(pass))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "id_encrypted")
	if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}
