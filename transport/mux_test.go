package transport

import (
	"context"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/nix-hive/nix-hive/lab"
	"github.com/nix-hive/nix-hive/lab/labtest"
	"github.com/nix-hive/nix-hive/shell"
	"golang.org/x/crypto/ssh"
)

// labMuxConfig is the lab's endpoints, pinned, as a holder's config.
func labMuxConfig(t *testing.T, l *lab.Lab) Config {
	return Config{Endpoints: labEndpoints(l, true), UserConfig: "none", KnownHostsFiles: []string{},
		AcceptedKnownHosts: filepath.Join(t.TempDir(), "accepted")}
}

// startMux serves cfg's connections from a holder in this process, on a
// socket in a directory of its own; it ends with the test. done is
// closed when Serve has returned.
func startMux(t *testing.T, cfg Config) (s *MuxServer, sock string, done <-chan struct{}) {
	t.Helper()
	t.Setenv("XDG_RUNTIME_DIR", t.TempDir())
	if _, err := MuxDir(true); err != nil {
		t.Fatal(err)
	}
	sock, err := MuxSocket(cfg)
	if err != nil {
		t.Fatal(err)
	}
	s, err = NewMuxServer(cfg, 0, t.Logf)
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

// TestMuxLab runs commands, sftp and file reads on real sshd hosts behind
// a jump host through a holder, from pools that make no connection of
// their own: the holder's connections serve every pool, a cut one is
// redialed, RunFresh and Reset get new ones, and a stopped holder fails
// commands instead of hanging them.
func TestMuxLab(t *testing.T) {
	hermetic(t)
	l := labtest.New(t, lab.Config{Internal: 2})
	ctx := testCtx(t)
	cfg := labMuxConfig(t, l)
	srv, sock, ended := startMux(t, cfg)
	var internal []*lab.Host
	for _, h := range l.Hosts {
		if h.Jump != "" {
			internal = append(internal, h)
		}
	}
	h1, h2 := internal[0], internal[1]
	client := func(t *testing.T) *Pool {
		t.Helper()
		c := cfg
		c.Mux = sock
		p := newTestPool(t, c)
		if p.Mux() != sock {
			t.Fatalf("pool does not go through the holder: %v", p.Warnings())
		}
		return p
	}
	p := client(t)
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

	t.Run("sftp round trip of a directory tree", func(t *testing.T) {
		testCopyTree(t, ctx, p, h1)
	})

	t.Run("file reads over the holder's sftp session", func(t *testing.T) {
		testReader(t, ctx, p, h2)
	})

	t.Run("cancelled command returns and stops remotely", func(t *testing.T) {
		testCancel(t, ctx, p, h2)
	})

	t.Run("another pool makes no connection", func(t *testing.T) {
		before := made()
		q := client(t)
		for _, h := range l.Hosts {
			out, _, code, err := q.Output(ctx, h.Name, "echo reached "+shell.Quote(h.Name))
			if err != nil || code != 0 || string(out) != "reached "+h.Name+"\n" {
				t.Errorf("Output on %s = %q, %d, %v", h.Name, out, code, err)
			}
		}
		if d, tun := q.Handshakes(); d+tun != 0 || made() != before {
			t.Errorf("pool made %d, holder %d new connections; want none", d+tun, made()-before)
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
		if n, err := h1.CutConnections(); n == 0 || err != nil {
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
		if _, err := p.Run(ctx, "nope", "true", nil, nil, nil); !errors.Is(err, ErrUnknownInstance) {
			t.Errorf("Run on nope = %v; want ErrUnknownInstance", err)
		}
	})

	t.Run("a stopped holder fails commands and removes its socket", func(t *testing.T) {
		if err := p.StopMux(); err != nil {
			t.Fatal(err)
		}
		<-ended
		if _, err := p.Run(ctx, h1.Name, "true", nil, nil, nil); err == nil {
			t.Error("Run through a stopped holder succeeded")
		}
		if _, err := os.Stat(sock); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("socket after stop: %v", err)
		}
		c := cfg
		c.Mux = sock
		q := newTestPool(t, c)
		if q.Mux() != "" || len(q.Warnings()) == 0 {
			t.Errorf("pool over a stopped holder: mux %q, warnings %q", q.Mux(), q.Warnings())
		}
		if code, err := q.Run(ctx, h1.Name, "true", nil, nil, nil); err != nil || code != 0 {
			t.Errorf("direct Run without the holder = %d, %v", code, err)
		}
	})
}

// The holder ends once it has been idle long enough after its last
// client left.
func TestMuxIdle(t *testing.T) {
	hermetic(t)
	l := labtest.New(t, lab.Config{Hosts: 1})
	ctx := testCtx(t)
	cfg := labMuxConfig(t, l)
	t.Setenv("XDG_RUNTIME_DIR", t.TempDir())
	if _, err := MuxDir(true); err != nil {
		t.Fatal(err)
	}
	sock, _ := MuxSocket(cfg)
	s, err := NewMuxServer(cfg, 1, t.Logf) // 1ns: as soon as no client is connected
	if err != nil {
		t.Fatal(err)
	}
	ln, err := s.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	// A client counted before Serve starts, so that the holder cannot
	// end before the real one below connects; it leaves with it.
	s.clients.Add(1)
	ended := make(chan error, 1)
	go func() { ended <- s.Serve(context.Background(), ln) }()
	c := cfg
	c.Mux = sock
	p, err := NewPool(c)
	if err != nil || p.Mux() == "" {
		t.Fatalf("NewPool: %v %v", err, p.Warnings())
	}
	if code, err := p.Run(ctx, l.Hosts[0].Name, "true", nil, nil, nil); err != nil || code != 0 {
		t.Errorf("Run = %d, %v", code, err)
	}
	if n := s.Info().Connected; n != 1 {
		t.Errorf("holder holds %d connections; want 1", n)
	}
	p.Close()
	s.clients.Add(-1)
	s.touch()
	select {
	case err := <-ended:
		if err != nil {
			t.Errorf("Serve: %v", err)
		}
	case <-ctx.Done():
		t.Fatal("the holder did not end once idle")
	}
	if _, err := os.Stat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket after the holder ended: %v", err)
	}
}

// A host that refuses the holder's keys (it has no one to ask for a
// passphrase) is logged in to by the command itself when it can ask,
// through the holder's connection to the jump host; a command that cannot
// ask gets the host's refusal.
func TestMuxLoginFallback(t *testing.T) {
	hermetic(t)
	t.Setenv("SSH_AUTH_SOCK", "") // the key below is in no agent
	l := labtest.New(t, lab.Config{Internal: 1})
	ctx := testCtx(t)
	cfg := labMuxConfig(t, l)
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
	srv, sock, _ := startMux(t, cfg)

	c := cfg
	c.Mux = sock
	asked := 0
	c.Passphrase = func(string) ([]byte, error) { asked++; return []byte(pass), nil }
	p := newTestPool(t, c)
	out, _, code, err := p.Output(ctx, inner.Name, "echo logged in")
	if err != nil || code != 0 || string(out) != "logged in\n" {
		t.Fatalf("Output through the fallback = %q, %d, %v", out, code, err)
	}
	if d, tun := p.Handshakes(); d != 0 || tun != 1 || asked != 1 {
		t.Errorf("command made %d direct and %d tunnelled connections and asked %d times; want 0, 1, 1", d, tun, asked)
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
	q := newTestPool(t, c)
	_, _, _, err = q.Output(ctx, inner.Name, "true")
	if err == nil || !strings.Contains(err.Error(), "no agent holds it") || !strings.Contains(err.Error(), "through mux") {
		t.Errorf("Output from a command that cannot ask = %v; want the holder's refusal", err)
	}
}

// A holder's connection is probed every KeepAlive while a command uses it
// and only every IdleKeepAlive while none does; one that goes silent
// (its host frozen) is dropped when an open on it times out, and the
// next open redials.
func TestIdleKeepAlive(t *testing.T) {
	hermetic(t)
	l := labtest.New(t, lab.Config{Hosts: 1})
	ctx := testCtx(t)
	h := l.Hosts[0]
	cfg := labMuxConfig(t, l)
	cfg.KeepAlive, cfg.IdleKeepAlive, cfg.KeepAliveTimeout = 20*time.Millisecond, time.Hour, time.Minute
	p := newTestPool(t, cfg)
	ticks := make(chan bool, 1)
	p.keepaliveTick = func(probed bool) {
		select {
		case ticks <- probed:
		default: // the test is not listening: keep the loop going
		}
	}
	next := func() bool {
		t.Helper()
		select {
		case probed := <-ticks:
			return probed
		case <-ctx.Done():
			t.Fatal("no keepalive tick")
			return false
		}
	}
	if _, err := p.Client(ctx, h.Name); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 5; i++ {
		if next() {
			t.Fatal("an idle connection was probed before IdleKeepAlive passed")
		}
	}
	ch, _, release, err := p.openChannel(ctx, h.Name, false, "session", nil)
	if err != nil {
		t.Fatal(err)
	}
	for !next() { // ticks from before the open, until the first probe
	}
	if !next() {
		t.Error("a connection in use was not probed at every tick")
	}
	ch.Close()
	release()
	for next() { // a tick that began before the release
	}
	for i := 0; i < 5; i++ {
		if next() {
			t.Fatal("a connection no longer in use was still probed at every tick")
		}
	}

	if err := h.Freeze(); err != nil {
		t.Fatal(err)
	}
	defer h.Thaw()
	short, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	_, _, _, err = p.openChannel(short, h.Name, false, "session", nil)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("open on a frozen host's connection = %v; want a timeout", err)
	}
	if n := p.Connected(); n != 0 {
		t.Errorf("%d connections kept after an open on one timed out; want it dropped", n)
	}
	if err := h.Thaw(); err != nil {
		t.Fatal(err)
	}
	before, _ := p.Handshakes()
	ch, _, release, err = p.openChannel(ctx, h.Name, false, "session", nil)
	if err != nil {
		t.Fatalf("open after the host thawed: %v", err)
	}
	ch.Close()
	release()
	if after, _ := p.Handshakes(); after != before+1 {
		t.Errorf("open after the host thawed made %d connections; want 1 (a redial)", after-before)
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

// MuxDir refuses a directory that someone else could use to pose as the
// holder.
func TestMuxDir(t *testing.T) {
	tests := []struct {
		name    string
		prepare func(dir string) error
		create  bool
		wantErr string
	}{
		{"missing, made", func(string) error { return nil }, true, ""},
		{"missing, only named", func(string) error { return nil }, false, ""},
		{"mode 0700", func(d string) error { return os.Mkdir(d, 0o700) }, false, ""},
		{"mode 0755", func(d string) error { return os.Mkdir(d, 0o755) }, true, "lets others in; chmod 700 it"},
		{"a file", func(d string) error { return os.WriteFile(d, nil, 0o600) }, true, "not a directory"},
		{"a symlink", func(d string) error { return os.Symlink(os.TempDir(), d) }, true, "not a directory"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rt := t.TempDir()
			t.Setenv("XDG_RUNTIME_DIR", rt)
			want := filepath.Join(rt, "nix-hive")
			if err := tt.prepare(want); err != nil {
				t.Fatal(err)
			}
			dir, err := MuxDir(tt.create)
			switch {
			case tt.wantErr == "" && (err != nil || dir != want):
				t.Errorf("MuxDir = %q, %v; want %q", dir, err, want)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), want)):
				t.Errorf("MuxDir = %q, %v; want an error naming %s and saying %q", dir, err, want, tt.wantErr)
			}
			if _, serr := MuxSocket(Config{}); (serr != nil) != (tt.wantErr != "") {
				t.Errorf("MuxSocket error %v, MuxDir error %v: they should agree", serr, err)
			}
		})
	}
}

// A holder's socket name follows the endpoints but not the timeouts.
func TestMuxSocketName(t *testing.T) {
	t.Setenv("XDG_RUNTIME_DIR", t.TempDir())
	base := Config{Endpoints: map[string]Endpoint{"a": {Name: "a", Host: "10.0.0.1"}}, UserConfig: "none"}
	name := func(cfg Config) string {
		s, err := MuxSocket(cfg)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	moved := base
	moved.Endpoints = map[string]Endpoint{"a": {Name: "a", Host: "10.0.0.2"}}
	slow := base
	slow.ConnectTimeout = 99
	switch {
	case name(base) == name(moved):
		t.Error("a changed address keeps the holder's socket")
	case name(base) != name(slow):
		t.Error("a changed timeout changes the holder's socket")
	}
}

// A holder's config, as handed to it and as summed into its record and
// its socket's name, is what it was before the holder's config became the
// Config itself: holders that run now are not taken for another version
// of their hive.
func TestMuxConfigUnchanged(t *testing.T) {
	cfg := Config{
		Endpoints: map[string]Endpoint{
			"a": {Name: "a", Host: "10.0.0.1", Port: 2222, User: "ops", HostKeys: []string{"ssh-ed25519 AAAA"}, Jump: "b", Options: map[string]string{"IdentityFile": "~/.ssh/k"}},
			"b": {Host: "b.example"},
		},
		KnownHostsFiles: []string{"/kh"}, HostCAs: []string{"ssh-ed25519 CA"}, AcceptNewHostKeys: true,
		AcceptedKnownHosts: "/acc", ConnectTimeout: 3 * time.Second, KeepAlive: 3 * time.Second, KeepAliveTimeout: 9 * time.Second,
		IdleKeepAlive: time.Minute, UserConfig: "none", BatchMode: true, RawCommands: true, Hive: "/hive",
		Passphrase: func(string) ([]byte, error) { return nil, nil },
	}
	const wantJSON = `{"Protocol":"nix-hive-mux-2","Endpoints":{"a":{"Name":"a","Host":"10.0.0.1","Port":2222,"User":"ops","HostKeys":["ssh-ed25519 AAAA"],"Jump":"b","Options":{"IdentityFile":"~/.ssh/k"}},"b":{"Name":"","Host":"b.example","Port":0,"User":"","HostKeys":null,"Jump":"","Options":null}},"KnownHostsFiles":["/kh"],"HostCAs":["ssh-ed25519 CA"],"AcceptNewHostKeys":true,"AcceptedKnownHosts":"/acc","ConnectTimeout":3000000000,"KeepAlive":3000000000,"KeepAliveTimeout":9000000000,"UserConfig":"none","UserConfigSum":"","Hive":"/hive"}`
	b, err := EncodeMuxConfig(cfg)
	if err != nil || string(b) != wantJSON {
		t.Errorf("EncodeMuxConfig = %s, %v; want %s", b, err, wantJSON)
	}
	if sum := toMuxConfig(cfg).sum(); sum != "d33970cff78e145d904ddb3f" {
		t.Errorf("sum = %s; want d33970cff78e145d904ddb3f", sum)
	}
	bare := Config{UserConfig: "none", KnownHostsFiles: []string{}, AcceptedKnownHosts: "/x"}
	if sum := toMuxConfig(bare).sum(); sum != "7ac742dfc7569cded6ce2434" {
		t.Errorf("sum of a bare config = %s; want 7ac742dfc7569cded6ce2434", sum)
	}
	got, err := DecodeMuxConfig(b)
	if err != nil {
		t.Fatal(err)
	}
	want := cfg
	want.IdleKeepAlive, want.RawCommands, want.Passphrase = 0, false, nil
	if got.Passphrase != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("DecodeMuxConfig = %+v; want %+v", got, want)
	}
}
