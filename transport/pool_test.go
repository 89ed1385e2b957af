package transport

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"

	"github.com/nix-hive/nix-hive/hostkey"
)

// hermetic keeps the user's real agent, keys and configs out of a test.
func hermetic(t *testing.T) string {
	t.Helper()
	home := t.TempDir()
	t.Setenv("HOME", home)
	t.Setenv("SSH_AUTH_SOCK", "")
	return home
}

func newTestPool(t *testing.T, cfg Config) *Pool {
	t.Helper()
	if cfg.UserConfig == "" {
		cfg.UserConfig = "none"
	}
	if cfg.KnownHostsFiles == nil {
		cfg.KnownHostsFiles = []string{}
	}
	if cfg.AcceptedKnownHosts == "" {
		cfg.AcceptedKnownHosts = filepath.Join(t.TempDir(), "accepted_known_hosts")
	}
	p, err := NewPool(cfg)
	if err != nil {
		t.Fatalf("NewPool: %v", err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func testCtx(t *testing.T) context.Context {
	// Generous: only a hang would hit it, and a hang is the failure.
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// onePool is a pool of one endpoint, "a", served in-process.
func onePool(t *testing.T) (*Pool, *testServer, context.Context) {
	t.Helper()
	hermetic(t)
	key := newClientKey(t)
	srv := newTestServer(t, key.signer.PublicKey())
	p := newTestPool(t, Config{Endpoints: map[string]Endpoint{"a": srv.endpoint("a", key)}})
	return p, srv, testCtx(t)
}

func TestRunOutputAndExitCodes(t *testing.T) {
	p, _, ctx := onePool(t)

	tests := []struct {
		name, cmd, stdin string
		wantOut, wantErr string
		wantCode         int
	}{
		{"success", "echo out; echo err >&2", "", "out\n", "err\n", 0},
		{"exit code passes through", "exit 3", "", "", "", 3},
		{"stdin reaches the command", "cat", "hello\nworld", "hello\nworld", "", 0},
		{"killed by a signal is 128+N", "kill -9 $$", "", "", "", 137},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			code, err := p.Run(ctx, "a", tt.cmd, strings.NewReader(tt.stdin), &out, &errb)
			if err != nil {
				t.Fatalf("Run: %v", err)
			}
			if code != tt.wantCode || out.String() != tt.wantOut || errb.String() != tt.wantErr {
				t.Errorf("got code %d stdout %q stderr %q; want %d %q %q", code, out.String(), errb.String(), tt.wantCode, tt.wantOut, tt.wantErr)
			}
		})
	}
	stdout, stderr, code, err := p.Output(ctx, "a", "printf x; printf y >&2; exit 1")
	if err != nil || string(stdout) != "x" || string(stderr) != "y" || code != 1 {
		t.Errorf("Output = %q, %q, %d, %v; want x, y, 1, nil", stdout, stderr, code, err)
	}
	if got := p.Stats().Dials["a"]; got != 1 {
		t.Errorf("Dials(a) = %d after %d commands; want 1", got, len(tests)+1)
	}
}

// Stats tells exec sessions from sftp sessions, and counts the requests
// sent on the sftp ones: the version handshake, then one per call.
func TestStatsSplitSessions(t *testing.T) {
	p, _, ctx := onePool(t)
	for range 2 {
		if _, _, code, err := p.Output(ctx, "a", "true"); err != nil || code != 0 {
			t.Fatalf("Output: %d, %v", code, err)
		}
	}
	sc, err := p.SFTP(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, err := sc.Stat("/"); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := p.SFTP(ctx, "a"); err != nil { // the same session
		t.Fatal(err)
	}
	st := p.Stats()
	if st.Exec != 2 || st.SFTP != 1 || st.Sessions != 3 || st.SFTPRequests != 4 {
		t.Errorf("Stats: %d exec, %d sftp, %d sessions, %d sftp requests; want 2, 1, 3, 4", st.Exec, st.SFTP, st.Sessions, st.SFTPRequests)
	}
}

func TestConcurrentCallersShareOneDial(t *testing.T) {
	p, srv, ctx := onePool(t)

	const n = 25 // more than maxSessions: the surplus waits for a slot
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out, _, code, err := p.Output(ctx, "a", fmt.Sprintf("echo %d", i))
			if err == nil && (code != 0 || string(out) != fmt.Sprintf("%d\n", i)) {
				err = fmt.Errorf("command %d: code %d output %q", i, code, out)
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if d, a := p.Stats().Dials["a"], srv.acceptCount(); d != 1 || a != 1 {
		t.Errorf("Dials = %d, server accepted %d connections; want 1 and 1", d, a)
	}
}

// TestHostKeyVerification: the pool checks each host's key with what
// Hosts resolves for it (pins, the known_hosts names and files, accepting
// into AcceptedKnownHosts), and a refusal stops the command. Which keys
// are accepted is package hostkey's, and tested there.
func TestHostKeyVerification(t *testing.T) {
	key := newClientKey(t)
	srv := newTestServer(t, key.signer.PublicKey())
	other := hostkey.AuthorizedKey(newHostSigner(t).PublicKey())

	tests := []struct {
		name       string
		pinned     []string
		knownHosts string // %s is replaced by the server's key
		accept     bool
		wantErr    error
		wantInMsg  []string
		wantRecord bool
	}{
		{name: "pinned key matches", pinned: []string{srv.hostKey}},
		{name: "pinned key differs", pinned: []string{other}, wantErr: hostkey.ErrMismatch,
			wantInMsg: []string{"does not match", "SHA256:", "pin its new key with hostKey = \"ssh-ed25519 "}},
		{name: "known_hosts by address", knownHosts: "[127.0.0.1]:PORT %s\n"},
		{name: "known_hosts by instance name (HostKeyAlias)", knownHosts: "www-1 %s\n"},
		{name: "known_hosts has another key", knownHosts: "[127.0.0.1]:PORT " + other + "\n", accept: true, wantErr: hostkey.ErrMismatch,
			wantInMsg: []string{"known_hosts:1"}},
		{name: "unknown", wantErr: hostkey.ErrUnknown,
			wantInMsg: []string{"is unknown", "SHA256:", `hostKey = "ssh-ed25519 AAAA`, "--accept-new-host-keys"}},
		{name: "unknown accepted when asked", accept: true, wantRecord: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hermetic(t)
			dir := t.TempDir()
			kh := filepath.Join(dir, "known_hosts")
			if tt.knownHosts != "" {
				line := strings.ReplaceAll(tt.knownHosts, "PORT", fmt.Sprint(srv.port))
				if strings.Contains(line, "%s") {
					line = fmt.Sprintf(line, srv.hostKey)
				}
				if err := os.WriteFile(kh, []byte(line), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			accepted := filepath.Join(dir, "accepted")
			ep := srv.endpoint("www-1", key)
			ep.HostKeys = tt.pinned
			before := srv.execCount()
			p := newTestPool(t, Config{
				Endpoints:          map[string]Endpoint{"www-1": ep},
				KnownHostsFiles:    []string{kh},
				AcceptNewHostKeys:  tt.accept,
				AcceptedKnownHosts: accepted,
			})
			code, err := p.Run(testCtx(t), "www-1", "true", nil, nil, nil)
			if tt.wantErr == nil {
				if err != nil || code != 0 {
					t.Fatalf("Run = %d, %v; want success", code, err)
				}
			} else {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("Run error = %v; want %v", err, tt.wantErr)
				}
				if srv.execCount() != before {
					t.Errorf("a command ran on a host whose key was refused")
				}
			}
			for _, s := range tt.wantInMsg {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not mention %q", err, s)
				}
			}
			rec, _ := os.ReadFile(accepted)
			if tt.wantRecord != (len(rec) > 0) {
				t.Errorf("accepted file = %q; want a record: %v", rec, tt.wantRecord)
			}
			if tt.wantRecord {
				// Under the instance's alias, not the address: the key
				// belongs to www-1, wherever it lives.
				want := "www-1 " + srv.hostKey + "\n"
				if string(rec) != want {
					t.Errorf("recorded %q; want %q", rec, want)
				}
				// The next run knows the key without accepting anything.
				ep.HostKeys = nil
				p2 := newTestPool(t, Config{Endpoints: map[string]Endpoint{"www-1": ep}, AcceptedKnownHosts: accepted})
				if _, err := p2.Run(testCtx(t), "www-1", "true", nil, nil, nil); err != nil {
					t.Errorf("second run with the recorded key: %v", err)
				}
			}
		})
	}
}

func TestJumpChain(t *testing.T) {
	hermetic(t)
	key := newClientKey(t)
	a := newTestServer(t, key.signer.PublicKey())
	b := newTestServer(t, key.signer.PublicKey())
	c := newTestServer(t, key.signer.PublicKey())
	epB := b.endpoint("b", key)
	epB.Jump = "a"
	epC := c.endpoint("c", key)
	epC.Jump = "b"
	p := newTestPool(t, Config{Endpoints: map[string]Endpoint{"a": a.endpoint("a", key), "b": epB, "c": epC}})
	ctx := testCtx(t)

	eff, err := p.Hosts().Resolve("c")
	if err != nil || strings.Join(eff.JumpChain, ",") != "a,b" {
		t.Fatalf("Resolve(c) = %+v, %v; want jump chain a,b", eff, err)
	}
	for range 3 {
		for _, name := range []string{"c", "b", "a"} {
			if code, err := p.Run(ctx, name, "true", nil, nil, nil); err != nil || code != 0 {
				t.Fatalf("Run on %s = %d, %v", name, code, err)
			}
		}
	}
	for name, srv := range map[string]*testServer{"a": a, "b": b, "c": c} {
		if d, acc := p.Stats().Dials[name], srv.acceptCount(); d != 1 || acc != 1 {
			t.Errorf("%s: Dials = %d, server accepted %d; want 1 and 1 (jump connections are shared)", name, d, acc)
		}
	}
}

func TestNewPoolValidation(t *testing.T) {
	hermetic(t)
	ok := Endpoint{Host: "127.0.0.1"}
	tests := []struct {
		name    string
		eps     map[string]Endpoint
		wantMsg string
	}{
		{"jump cycle", map[string]Endpoint{"a": {Jump: "b"}, "b": {Jump: "c"}, "c": {Jump: "a"}}, "cycle: a -> b -> c -> a"},
		{"self jump", map[string]Endpoint{"a": {Jump: "a"}}, "cycle: a -> a"},
		{"unknown jump", map[string]Endpoint{"a": {Jump: "nope"}}, `instance a: jump = "nope" is not an instance`},
		{"bad name", map[string]Endpoint{"a\nb": ok}, "name is not a valid instance name"},
		{"shell in name", map[string]Endpoint{"$(id)a": ok}, "name is not a valid instance name"},
		{"shell in host", map[string]Endpoint{"a": {Host: "$(id>pwned)127.0.0.1"}}, "is not a DNS name"},
		{"shell in user", map[string]Endpoint{"a": {Host: "127.0.0.1", User: "$(id)root"}}, "is not a POSIX login name"},
		{"send env", map[string]Endpoint{"a": {Options: map[string]string{"SendEnv": "*"}}}, "ssh option SendEnv is refused: it sends something from this machine"},
		{"control path", map[string]Endpoint{"a": {Options: map[string]string{"controlpath": "/tmp/x"}}}, "ssh option ControlPath is refused: it shares connections"},
		{"global known hosts", map[string]Endpoint{"a": {Options: map[string]string{"GlobalKnownHostsFile": "/tmp/x"}}}, "ssh option GlobalKnownHostsFile is refused: it decides which host keys are trusted"},
		{"unknown option", map[string]Endpoint{"a": {Options: map[string]string{"Frobnicate": "yes"}}}, "ssh option Frobnicate is refused: a hive may set only options that shape the connection"},
		{"name differs from key", map[string]Endpoint{"a": {Name: "b"}}, "must equal its key"},
		{"bad host", map[string]Endpoint{"a": {Host: "x y"}}, "host"},
		{"option host", map[string]Endpoint{"a": {Host: "-oProxyCommand=x"}}, "is not a DNS name"},
		{"bad port", map[string]Endpoint{"a": {Port: 70000}}, "out of range"},
		{"bad host key", map[string]Endpoint{"a": {HostKeys: []string{"ssh-ed25519 nope"}}}, "hostKey #1"},
		{"reserved option", map[string]Endpoint{"a": {Options: map[string]string{"port": "2"}}}, "set port instead"},
		{"proxycommand", map[string]Endpoint{"a": {Options: map[string]string{"ProxyCommand": "nc %h %p"}}}, "ssh option ProxyCommand is refused: it can make ssh run a command on this machine"},
		{"include", map[string]Endpoint{"a": {Options: map[string]string{"include": "/tmp/x"}}}, "ssh option Include is refused"},
		{"local command", map[string]Endpoint{"a": {Options: map[string]string{"LocalCommand": "touch /tmp/x"}}}, "ssh option LocalCommand is refused"},
		{"permit local command", map[string]Endpoint{"a": {Options: map[string]string{"PermitLocalCommand": "yes"}}}, "ssh option PermitLocalCommand is refused"},
		{"known hosts command", map[string]Endpoint{"a": {Options: map[string]string{"KnownHostsCommand": "x"}}}, "ssh option KnownHostsCommand is refused"},
		{"match exec", map[string]Endpoint{"a": {Options: map[string]string{"Match": `exec "x"`}}}, "ssh option Match is refused"},
		{"host block", map[string]Endpoint{"a": {Options: map[string]string{"Host": "*"}}}, "ssh option Host is refused"},
		{"pkcs11", map[string]Endpoint{"a": {Options: map[string]string{"PKCS11Provider": "/tmp/evil.so"}}}, "ssh option PKCS11Provider is refused"},
		{"security key provider", map[string]Endpoint{"a": {Options: map[string]string{"SecurityKeyProvider": "/tmp/evil.so"}}}, "ssh option SecurityKeyProvider is refused"},
		{"xauth", map[string]Endpoint{"a": {Options: map[string]string{"XAuthLocation": "/tmp/x"}}}, "ssh option XAuthLocation is refused"},
		{"newline in option", map[string]Endpoint{"a": {Options: map[string]string{"IdentityFile": "x\nHost *"}}}, "control character"},
		{"bad option name", map[string]Endpoint{"a": {Options: map[string]string{"Identity File": "x"}}}, "not an OpenSSH option name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewPool(Config{Endpoints: tt.eps, UserConfig: "none"})
			if err == nil || !strings.Contains(err.Error(), tt.wantMsg) {
				t.Fatalf("NewPool error = %v; want one containing %q", err, tt.wantMsg)
			}
		})
	}
}

func TestDeadConnectionIsEvictedAndRedialed(t *testing.T) {
	hermetic(t)
	key := newClientKey(t)
	srv := newTestServer(t, key.signer.PublicKey())
	p := newTestPool(t, Config{
		Endpoints: map[string]Endpoint{"a": srv.endpoint("a", key)},
		// Probes often; a reply may take long on a loaded machine before
		// a connection counts as dead, so only the stall below kills it.
		KeepAlive:        20 * time.Millisecond,
		KeepAliveTimeout: 3 * time.Second,
	})
	ctx := testCtx(t)
	if _, err := p.Run(ctx, "a", "true", nil, nil, nil); err != nil {
		t.Fatal(err)
	}
	first, err := p.Client(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	// A hung host: keepalives go unanswered, so the pool must drop the
	// connection by itself.
	srv.stall(true)
	done := make(chan struct{})
	go func() {
		first.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		t.Fatal("the stalled connection was never closed by keepalive")
	}
	srv.stall(false)
	if code, err := p.Run(ctx, "a", "true", nil, nil, nil); err != nil || code != 0 {
		t.Fatalf("Run after eviction = %d, %v", code, err)
	}
	if d := p.Stats().Dials["a"]; d != 2 {
		t.Errorf("Dials = %d; want 2 (one redial)", d)
	}
}

func TestKilledHost(t *testing.T) {
	hermetic(t)
	key := newClientKey(t)
	a := newTestServer(t, key.signer.PublicKey())
	b := newTestServer(t, key.signer.PublicKey())
	p := newTestPool(t, Config{Endpoints: map[string]Endpoint{"a": a.endpoint("a", key), "b": b.endpoint("b", key)}})
	ctx := testCtx(t)
	for _, n := range []string{"a", "b"} {
		if _, err := p.Run(ctx, n, "true", nil, nil, nil); err != nil {
			t.Fatal(err)
		}
	}
	a.kill()
	short, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := p.Run(short, "a", "true", nil, nil, nil); err == nil {
		t.Fatal("Run on a killed host succeeded")
	}
	if code, err := p.Run(ctx, "b", "true", nil, nil, nil); err != nil || code != 0 {
		t.Errorf("Run on the other host = %d, %v", code, err)
	}
	if d := p.Stats().Dials["b"]; d != 1 {
		t.Errorf("Dials(b) = %d; want 1", d)
	}
}

// signalWriter closes ready at the first write.
type signalWriter struct {
	once  sync.Once
	ready chan struct{}
}

func (w *signalWriter) Write(b []byte) (int, error) {
	w.once.Do(func() { close(w.ready) })
	return len(b), nil
}

func TestRunCancel(t *testing.T) {
	hermetic(t)
	key := newClientKey(t)
	srv := newTestServer(t, key.signer.PublicKey())
	p := newTestPool(t, Config{Endpoints: map[string]Endpoint{"a": srv.endpoint("a", key)}})
	ctx, cancel := context.WithCancel(testCtx(t))
	w := &signalWriter{ready: make(chan struct{})}
	go func() {
		<-w.ready
		cancel()
	}()
	// Not exec: sleep is a child of the shell, so only a kill of the whole
	// process group stops it (the signal request reaches the shell only).
	const cmd = "echo started; sleep 100; echo after"
	_, err := p.Run(ctx, "a", cmd, nil, w, nil)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Run error = %v; want context.Canceled", err)
	}
	// The server reports the command done once every process holding its
	// output has exited, sleep included.
	wait := testCtx(t)
	for done := false; !done; {
		select {
		case line := <-srv.procDone:
			done = strings.HasSuffix(line, cmd)
		case <-wait.Done():
			t.Fatal("the remote command was not stopped by the cancellation")
		}
	}
	// And the connection stays usable.
	if code, err := p.Run(testCtx(t), "a", "true", nil, nil, nil); err != nil || code != 0 {
		t.Errorf("Run after cancel = %d, %v", code, err)
	}
}

func TestConnectTimeout(t *testing.T) {
	hermetic(t)
	// Accepts TCP but never speaks SSH, like a firewall black hole behind
	// a port forward.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		var held []net.Conn
		for {
			c, err := ln.Accept()
			if err != nil {
				for _, c := range held {
					c.Close()
				}
				return
			}
			held = append(held, c)
		}
	}()
	key := newClientKey(t)
	host, port, _ := net.SplitHostPort(ln.Addr().String())
	var portN int
	fmt.Sscan(port, &portN)
	p := newTestPool(t, Config{
		Endpoints:      map[string]Endpoint{"a": {Host: host, Port: portN, Options: map[string]string{"IdentityFile": key.path}}},
		ConnectTimeout: 200 * time.Millisecond,
	})
	_, err = p.Run(testCtx(t), "a", "true", nil, nil, nil)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Run error = %v; want a connect timeout (context.DeadlineExceeded)", err)
	}
}

func TestAgentAuth(t *testing.T) {
	hermetic(t)
	key := newClientKey(t)
	srv := newTestServer(t, key.signer.PublicKey())

	keyring := agent.NewKeyring()
	priv, err := ssh.ParseRawPrivateKey(mustRead(t, key.path))
	if err != nil {
		t.Fatal(err)
	}
	if err := keyring.Add(agent.AddedKey{PrivateKey: priv}); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "agent.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var mu sync.Mutex
	open := 0
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			open++
			mu.Unlock()
			go func() {
				agent.ServeAgent(keyring, c)
				mu.Lock()
				open--
				mu.Unlock()
			}()
		}
	}()
	t.Setenv("SSH_AUTH_SOCK", sock)

	ep := srv.endpoint("a", key)
	ep.Options = nil // no identity file: only the agent can log in
	p := newTestPool(t, Config{Endpoints: map[string]Endpoint{"a": ep}})
	if code, err := p.Run(testCtx(t), "a", "true", nil, nil, nil); err != nil || code != 0 {
		t.Fatalf("Run with agent = %d, %v", code, err)
	}
	// The agent socket is closed once the handshake is over; ServeAgent
	// returns when it sees that (asynchronously: wait for it, bounded
	// against a hang).
	for deadline := time.Now().Add(time.Minute); ; {
		mu.Lock()
		n := open
		mu.Unlock()
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d agent connections still open after the handshake", n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestNoKeyIsAClearError(t *testing.T) {
	hermetic(t)
	key := newClientKey(t)
	srv := newTestServer(t, key.signer.PublicKey())
	ep := srv.endpoint("a", key)
	ep.Options = nil
	p := newTestPool(t, Config{Endpoints: map[string]Endpoint{"a": ep}})
	_, err := p.Run(testCtx(t), "a", "true", nil, nil, nil)
	if err == nil || !strings.Contains(err.Error(), "no usable SSH key") {
		t.Fatalf("Run error = %v; want 'no usable SSH key'", err)
	}
}

func TestRefusedKeyIsExplained(t *testing.T) {
	hermetic(t)
	key, other := newClientKey(t), newClientKey(t)
	srv := newTestServer(t, key.signer.PublicKey())
	ep := srv.endpoint("a", other)
	p := newTestPool(t, Config{Endpoints: map[string]Endpoint{"a": ep}})
	_, err := p.Run(testCtx(t), "a", "true", nil, nil, nil)
	if err == nil || !strings.Contains(err.Error(), "tester was refused with "+other.path) {
		t.Fatalf("Run error = %v; want it to name the user and the key tried", err)
	}
}

func TestDefaultIdentityFile(t *testing.T) {
	home := hermetic(t)
	key := newClientKey(t)
	srv := newTestServer(t, key.signer.PublicKey())
	if err := os.MkdirAll(filepath.Join(home, ".ssh"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(home, ".ssh", "id_ed25519"), mustRead(t, key.path), 0o600); err != nil {
		t.Fatal(err)
	}
	ep := srv.endpoint("a", key)
	ep.Options = nil
	p := newTestPool(t, Config{Endpoints: map[string]Endpoint{"a": ep}})
	if code, err := p.Run(testCtx(t), "a", "true", nil, nil, nil); err != nil || code != 0 {
		t.Fatalf("Run with ~/.ssh/id_ed25519 = %d, %v", code, err)
	}
}

func TestClosedPool(t *testing.T) {
	hermetic(t)
	key := newClientKey(t)
	srv := newTestServer(t, key.signer.PublicKey())
	p := newTestPool(t, Config{Endpoints: map[string]Endpoint{"a": srv.endpoint("a", key)}})
	if _, err := p.Run(testCtx(t), "a", "true", nil, nil, nil); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if _, err := p.Run(testCtx(t), "a", "true", nil, nil, nil); !errors.Is(err, ErrClosed) {
		t.Errorf("Run after Close = %v; want ErrClosed", err)
	}
	if _, err := p.Run(testCtx(t), "nope", "true", nil, nil, nil); !errors.Is(err, ErrUnknownInstance) {
		t.Errorf("Run on unknown instance = %v; want ErrUnknownInstance", err)
	}
}

func TestShellWithoutTerminal(t *testing.T) {
	hermetic(t)
	key := newClientKey(t)
	srv := newTestServer(t, key.signer.PublicKey())
	p := newTestPool(t, Config{Endpoints: map[string]Endpoint{"a": srv.endpoint("a", key)}})
	var out bytes.Buffer
	code, err := p.Shell(testCtx(t), "a", strings.NewReader("echo hi\nexit 5\n"), &out, nil, Terminal{})
	if err != nil || code != 5 || out.String() != "hi\n" {
		t.Fatalf("Shell = %d, %v, output %q; want 5, nil, \"hi\\n\"", code, err, out.String())
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// A second connection to a host offers only what the first agreed on
// (the confirmation's handshake, a third of a kilobyte lighter); a host
// whose sshd no longer takes it is dialled again with every algorithm,
// so a new system that changes sshd's ciphers is not taken for one that
// broke logins.
func TestFreshConnectionOffersWhatWasAgreed(t *testing.T) {
	hermetic(t)
	key := newClientKey(t)
	srv := newTestServer(t, key.signer.PublicKey())
	srv.mu.Lock()
	srv.ciphers = []string{ssh.CipherAES128CTR}
	srv.mu.Unlock()
	p := newTestPool(t, Config{Endpoints: map[string]Endpoint{"a": srv.endpoint("a", key)}})
	ctx := testCtx(t)
	run := func(fresh bool) {
		t.Helper()
		var out bytes.Buffer
		runner := p.Run
		if fresh {
			runner = p.RunFresh
		}
		if code, err := runner(ctx, "a", "echo ok", nil, &out, io.Discard); err != nil || code != 0 || out.String() != "ok\n" {
			t.Fatalf("run (fresh %v): %d %v %q", fresh, code, err, out.String())
		}
	}
	run(false)
	cc, _, err := p.hosts.clientConfig(p.hosts.endpoints["a"])
	if err != nil {
		t.Fatal(err)
	}
	if !p.conns.narrow(p.hosts.endpoints["a"], cc) || !slices.Equal(cc.Ciphers, []string{ssh.CipherAES128CTR}) || len(cc.KeyExchanges) != 1 || len(cc.MACs) != 1 || len(cc.HostKeyAlgorithms) != 1 {
		t.Fatalf("after a handshake, the next offers %v %v %v %v; want one of each, the cipher aes128-ctr", cc.KeyExchanges, cc.Ciphers, cc.MACs, cc.HostKeyAlgorithms)
	}
	accepts := func() int {
		srv.mu.Lock()
		defer srv.mu.Unlock()
		return srv.accepts
	}
	before := accepts()
	run(true)
	if got := accepts() - before; got != 1 {
		t.Errorf("the narrowed fresh connection took %d dials, want 1", got)
	}
	srv.mu.Lock()
	srv.ciphers = []string{ssh.CipherChaCha20Poly1305}
	srv.mu.Unlock()
	before = accepts()
	run(true)
	if got := accepts() - before; got != 2 {
		t.Errorf("a host that changed its ciphers took %d dials, want 2 (the narrowed one refused, then every algorithm)", got)
	}
	run(true) // and what it agreed to now is remembered
	if got := accepts() - before; got != 3 {
		t.Errorf("after the change, a fresh connection took %d more dials, want 1", got-2)
	}
}

// A fleet's hosts share an sshd configuration: a host's first
// connection offers what another host agreed to; one that differs is
// dialled again with every algorithm, and then no host is narrowed on
// another's agreement.
func TestFirstConnectionOffersWhatTheFleetAgreed(t *testing.T) {
	hermetic(t)
	key := newClientKey(t)
	a, b, c := newTestServer(t, key.signer.PublicKey()), newTestServer(t, key.signer.PublicKey()), newTestServer(t, key.signer.PublicKey())
	set := func(srv *testServer, cipher string) {
		srv.mu.Lock()
		srv.ciphers = []string{cipher}
		srv.mu.Unlock()
	}
	set(a, ssh.CipherAES128CTR)
	set(b, ssh.CipherAES128CTR)
	set(c, ssh.CipherChaCha20Poly1305)
	accepts := func(srv *testServer) int {
		srv.mu.Lock()
		defer srv.mu.Unlock()
		return srv.accepts
	}
	p := newTestPool(t, Config{Endpoints: map[string]Endpoint{"a": a.endpoint("a", key), "b": b.endpoint("b", key), "c": c.endpoint("c", key)}})
	ctx := testCtx(t)
	for _, h := range []string{"a", "b"} {
		if code, err := p.Run(ctx, h, "true", nil, io.Discard, io.Discard); err != nil || code != 0 {
			t.Fatalf("run on %s: %d %v", h, code, err)
		}
	}
	if n := accepts(b); n != 1 {
		t.Errorf("b, like a, took %d dials, want 1", n)
	}
	if code, err := p.Run(ctx, "c", "true", nil, io.Discard, io.Discard); err != nil || code != 0 {
		t.Fatalf("run on c: %d %v", code, err)
	}
	if n := accepts(c); n != 2 {
		t.Errorf("c, which takes other ciphers, took %d dials, want 2", n)
	}
	cc, _, err := p.hosts.clientConfig(p.hosts.endpoints["b"])
	if err != nil {
		t.Fatal(err)
	}
	p.conns.agreedMu.Lock()
	delete(p.conns.agreed, "b "+p.hosts.endpoints["b"].Addr())
	p.conns.agreedMu.Unlock()
	if p.conns.narrow(p.hosts.endpoints["b"], cc) {
		t.Error("after a host refused another's algorithms, a host without its own record is still narrowed")
	}
}

// A host whose options leave out what another host agreed to is not
// narrowed to it: its first handshake offers its own lists, and takes
// one dial.
func TestNarrowingKeepsAHostsOwnAlgorithms(t *testing.T) {
	hermetic(t)
	key := newClientKey(t)
	a, b := newTestServer(t, key.signer.PublicKey()), newTestServer(t, key.signer.PublicKey())
	a.mu.Lock()
	a.ciphers = []string{ssh.CipherAES128CTR}
	a.mu.Unlock()
	epB := b.endpoint("b", key)
	epB.Options["Ciphers"] = ssh.CipherChaCha20Poly1305
	p := newTestPool(t, Config{Endpoints: map[string]Endpoint{"a": a.endpoint("a", key), "b": epB}})
	ctx := testCtx(t)
	for _, h := range []string{"a", "b"} {
		if code, err := p.Run(ctx, h, "true", nil, io.Discard, io.Discard); err != nil || code != 0 {
			t.Fatalf("run on %s: %d %v", h, code, err)
		}
	}
	if n := b.acceptCount(); n != 1 {
		t.Errorf("b took %d dials, want 1: it was offered a's aes128-ctr, which its Ciphers leave out", n)
	}
	if a, _ := agreedWith(p, "b"); a.Write.Cipher != ssh.CipherChaCha20Poly1305 {
		t.Errorf("b agreed on %+v; want its own %s", a, ssh.CipherChaCha20Poly1305)
	}
}

// agreedWith is what the last handshake with instance n agreed on, and
// whether there was one.
func agreedWith(p *Pool, n string) (ssh.NegotiatedAlgorithms, bool) {
	p.conns.agreedMu.Lock()
	defer p.conns.agreedMu.Unlock()
	a, ok := p.conns.agreed[n+" "+p.hosts.endpoints[n].Addr()]
	return a, ok
}
