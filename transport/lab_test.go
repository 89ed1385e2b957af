package transport

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nix-hive/nix-hive/hostkey"
	"github.com/nix-hive/nix-hive/lab"
	"github.com/nix-hive/nix-hive/lab/labtest"
	"github.com/nix-hive/nix-hive/shell"
	"golang.org/x/crypto/ssh"
)

// labEndpoints describes the lab's hosts, with their keys pinned or not.
func labEndpoints(l *lab.Lab, pin bool) map[string]Endpoint {
	eps := map[string]Endpoint{}
	for _, h := range l.Hosts {
		ep := Endpoint{Name: h.Name, Host: h.Addr, Port: h.Port, User: "root", Jump: h.Jump,
			Options: map[string]string{"IdentityFile": l.ClientKey}}
		if pin {
			ep.HostKeys = []string{h.HostKey}
		}
		eps[h.Name] = ep
	}
	return eps
}

// TestLab runs the transport against real sshd hosts; the subtests share
// one lab to keep the suite fast, and the destructive ones come last.
func TestLab(t *testing.T) {
	hermetic(t)
	l := labtest.New(t, lab.Config{Hosts: 3})
	h1, h2, h3 := l.Hosts[0], l.Hosts[1], l.Hosts[2]
	ctx := testCtx(t)
	p := newTestPool(t, Config{Endpoints: labEndpoints(l, true)})

	t.Run("one pooled connection per host", func(t *testing.T) {
		var wg sync.WaitGroup
		for _, h := range l.Hosts {
			for i := range 20 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					out, _, code, err := p.Output(ctx, h.Name, fmt.Sprintf("echo %s-%d", shell.Quote(h.Name), i))
					if want := fmt.Sprintf("%s-%d\n", h.Name, i); err != nil || code != 0 || string(out) != want {
						t.Errorf("%s: Output = %q, %d, %v; want %q", h.Name, out, code, err, want)
					}
				}()
			}
		}
		wg.Wait()
		for _, h := range l.Hosts {
			if d := p.Stats().Dials[h.Name]; d != 1 {
				t.Errorf("Dials(%s) = %d after 20 commands; want 1", h.Name, d)
			}
		}
	})

	t.Run("OpenSSH's first cipher", func(t *testing.T) {
		// What the lab's sshd and nix-hive agreed on, both ways: the
		// cipher that pads small messages least (see cipherAlgorithms).
		if code, err := p.Run(ctx, h1.Name, "true", nil, nil, nil); err != nil || code != 0 {
			t.Fatalf("Run = %d, %v", code, err)
		}
		a, ok := agreedWith(p, h1.Name)
		if !ok || a.Write.Cipher != ssh.CipherChaCha20Poly1305 || a.Read.Cipher != ssh.CipherChaCha20Poly1305 {
			t.Errorf("the connection to %s agreed on %+v (recorded: %v); want %s both ways", h1.Name, a, ok, ssh.CipherChaCha20Poly1305)
		}
	})

	t.Run("the hive's algorithm options", func(t *testing.T) {
		// What a hive restricts, the lab's sshd and nix-hive agree on.
		eps := labEndpoints(l, true)
		ep := eps[h1.Name]
		ep.Options = map[string]string{"IdentityFile": l.ClientKey, "Ciphers": "-chacha20*,aes128*", "KexAlgorithms": "ecdh-sha2-nistp256"}
		eps[h1.Name] = ep
		q := newTestPool(t, Config{Endpoints: eps})
		if code, err := q.Run(ctx, h1.Name, "true", nil, nil, nil); err != nil || code != 0 {
			t.Fatalf("Run = %d, %v", code, err)
		}
		a, _ := agreedWith(q, h1.Name)
		if a.Write.Cipher != ssh.CipherAES256GCM || a.KeyExchange != ssh.KeyExchangeECDHP256 {
			t.Errorf("with Ciphers -chacha20*,aes128* and KexAlgorithms ecdh-sha2-nistp256, %s agreed on %+v; want aes256-gcm and ecdh-sha2-nistp256", h1.Name, a)
		}
	})

	t.Run("exit status and stderr", func(t *testing.T) {
		out, errOut, code, err := p.Output(ctx, h1.Name, "echo to-out; echo to-err >&2; exit 7")
		if err != nil || code != 7 || string(out) != "to-out\n" || string(errOut) != "to-err\n" {
			t.Errorf("Output = %q, %q, %d, %v", out, errOut, code, err)
		}
	})

	t.Run("quoted arguments arrive intact", func(t *testing.T) {
		args := []string{"two words", `"double"`, "'single'", "it's", "$(touch /root/pwned1)", "`touch /root/pwned2`",
			"$HOME", "a;touch /root/pwned3", "*", "back\\slash", "new\nline", "", "-n", "ünïcödé"}
		out, errOut, code, err := p.Output(ctx, h1.Name, "printf '[%s]' "+shell.QuoteArgs(args))
		want := "[" + strings.Join(args, "][") + "]"
		if err != nil || code != 0 || string(out) != want {
			t.Errorf("got %q (stderr %q, code %d, err %v); want %q", out, errOut, code, err, want)
		}
		for _, f := range []string{"/root/pwned1", "/root/pwned2", "/root/pwned3"} {
			if _, err := os.Lstat(h1.Path(f)); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("%s exists on %s: an argument was executed", f, h1.Name)
			}
		}
	})

	t.Run("sftp reader answers like readlink and read", func(t *testing.T) {
		testReader(t, ctx, p, h2)
	})

	t.Run("cancelled command returns and stops remotely", func(t *testing.T) {
		testCancel(t, ctx, p, h2)
	})

	t.Run("host keys", func(t *testing.T) {
		dir := t.TempDir()
		known := writeFile(t, filepath.Join(dir, "known_hosts"), l.KnownHosts())
		unpinned := labEndpoints(l, false)
		tests := []struct {
			name    string
			known   []string
			accept  bool
			wantErr error
		}{
			{"no pin, key in known_hosts", []string{known}, false, nil},
			{"no pin, nothing known", nil, false, hostkey.ErrUnknown},
			{"no pin, accept new", nil, true, nil},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				accepted := filepath.Join(t.TempDir(), "accepted")
				q := newTestPool(t, Config{Endpoints: unpinned, KnownHostsFiles: tt.known, AcceptNewHostKeys: tt.accept, AcceptedKnownHosts: accepted})
				_, err := q.Run(ctx, h2.Name, "true", nil, nil, nil)
				if tt.wantErr == nil && err != nil || tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
					t.Fatalf("Run = %v; want %v", err, tt.wantErr)
				}
				if tt.accept {
					rec, _ := os.ReadFile(accepted)
					if want := h2.Name + " " + h2.HostKey + "\n"; string(rec) != want {
						t.Errorf("accepted file = %q; want %q", rec, want)
					}
				}
			})
		}
	})

	t.Run("replaced host key is refused and nothing runs", func(t *testing.T) {
		stale := labEndpoints(l, true)[h3.Name] // pinned before the "reinstall"
		if err := h3.ReplaceHostKey(ctx); err != nil {
			t.Fatal(err)
		}
		q := newTestPool(t, Config{Endpoints: map[string]Endpoint{h3.Name: stale}})
		_, err := q.Run(ctx, h3.Name, "touch /root/marker", nil, nil, nil)
		if !errors.Is(err, hostkey.ErrMismatch) {
			t.Fatalf("Run = %v; want hostkey.ErrMismatch", err)
		}
		if !strings.Contains(err.Error(), "SHA256:") || !strings.Contains(err.Error(), "pin its new key with hostKey = ") {
			t.Errorf("message %q lacks the fingerprint or the hint", err)
		}
		if _, err := os.Lstat(h3.Path("/root/marker")); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("/root/marker on %s: %v; a command ran despite the key mismatch", h3.Name, err)
		}
	})

	t.Run("killed host fails promptly, others unaffected", func(t *testing.T) {
		if err := h2.Stop(); err != nil {
			t.Fatal(err)
		}
		short, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if _, err := p.Run(short, h2.Name, "true", nil, nil, nil); err == nil {
			t.Fatalf("Run on stopped %s succeeded", h2.Name)
		}
		if code, err := p.Run(ctx, h1.Name, "true", nil, nil, nil); err != nil || code != 0 {
			t.Errorf("Run on %s = %d, %v", h1.Name, code, err)
		}
		if d := p.Stats().Dials[h1.Name]; d != 1 {
			t.Errorf("Dials(%s) = %d; want 1", h1.Name, d)
		}
		// Back up, the next call redials.
		if err := h2.Start(ctx); err != nil {
			t.Fatal(err)
		}
		if code, err := p.Run(ctx, h2.Name, "true", nil, nil, nil); err != nil || code != 0 {
			t.Errorf("Run on restarted %s = %d, %v", h2.Name, code, err)
		}
	})
}

// testCancel runs a command on h and cancels it once it has started: Run
// returns at once, and the command stops on the host.
func testCancel(t *testing.T, ctx context.Context, p *Pool, h *lab.Host) {
	cctx, cancel := context.WithCancel(ctx)
	w := &signalWriter{ready: make(chan struct{})}
	go func() {
		<-w.ready
		cancel()
	}()
	// sleep is the shell's child and the login is root, for which sshd
	// ignores signal requests: only the process group kill stops it.
	_, err := p.Run(cctx, h.Name, "echo started; sleep 100; echo after", nil, w, nil)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Run = %v; want context.Canceled", err)
	}
	// The host has its own pid namespace: pgrep there sees its
	// processes only. SIGTERM lands asynchronously, so wait for it.
	for {
		out, err := h.Exec(ctx, "pgrep", "-f", "^sleep 100$")
		var ee *exec.ExitError
		if errors.As(err, &ee) && ee.ExitCode() == 1 {
			break // no sleep left
		}
		if err != nil && !errors.As(err, &ee) {
			t.Fatalf("pgrep on %s: %v", h.Name, err)
		}
		if ctx.Err() != nil {
			t.Fatalf("remote sleep still running after cancel: %s", out)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if code, err := p.Run(ctx, h.Name, "true", nil, nil, nil); err != nil || code != 0 {
		t.Errorf("Run after cancel = %d, %v", code, err)
	}
}

// TestLabJump: internal hosts are reached through the jump host's single
// pooled connection, and not at all directly (plain ssh with the
// generated config takes the same route: openssh's tests).
func TestLabJump(t *testing.T) {
	hermetic(t)
	l := labtest.New(t, lab.Config{Internal: 2})
	ctx := testCtx(t)
	cfg := Config{Endpoints: labEndpoints(l, true)}
	p := newTestPool(t, cfg)
	jump := l.Hosts[0]
	var internal []*lab.Host
	for _, h := range l.Hosts {
		if h.Jump != "" {
			internal = append(internal, h)
		}
	}
	if len(internal) != 2 {
		t.Fatalf("lab has %d internal hosts; want 2", len(internal))
	}
	for range 5 {
		for _, h := range internal {
			out, _, code, err := p.Output(ctx, h.Name, "echo reached "+shell.Quote(h.Name))
			if err != nil || code != 0 || string(out) != "reached "+h.Name+"\n" {
				t.Fatalf("Output on %s = %q, %d, %v", h.Name, out, code, err)
			}
		}
	}
	for _, h := range l.Hosts {
		if d := p.Stats().Dials[h.Name]; d != 1 {
			t.Errorf("Dials(%s) = %d; want 1", h.Name, d)
		}
	}
	if eff, _ := p.Hosts().Resolve(internal[0].Name); len(eff.JumpChain) != 1 || eff.JumpChain[0] != jump.Name {
		t.Errorf("Resolve(%s).JumpChain = %v; want [%s]", internal[0].Name, eff.JumpChain, jump.Name)
	}

	direct := labEndpoints(l, true)[internal[0].Name]
	direct.Jump = ""
	q := newTestPool(t, Config{Endpoints: map[string]Endpoint{direct.Name: direct}, ConnectTimeout: 2 * time.Second})
	if _, err := q.Run(ctx, direct.Name, "true", nil, nil, nil); err == nil {
		t.Errorf("direct dial of internal host %s succeeded", direct.Name)
	}

}

// testReader checks Reader against files made on a lab host: the host's
// answers (missing, not a link, dangling) are empty values, not errors,
// and a /proc file, whose size sftp reports as 0, reads in full.
func testReader(t *testing.T, ctx context.Context, p *Pool, h *lab.Host) {
	dir := "/root/reader"
	if _, _, code, err := p.Output(ctx, h.Name, "mkdir -p "+dir+" && cd "+dir+
		" && mkdir target && printf 'first line\\nsecond\\n' >file && ln -sfn target link && ln -sfn link chain && ln -sfn gone dangling"); err != nil || code != 0 {
		t.Fatalf("make files: %d, %v", code, err)
	}
	r, err := p.Files(ctx, h.Name)
	if err != nil {
		t.Fatal(err)
	}
	str := func(v string, err error) string {
		if err != nil {
			t.Errorf("session error: %v", err)
		}
		return v
	}
	for _, tt := range []struct{ what, got, want string }{
		{"Readlink of a link", str(r.Readlink(dir + "/chain")), "link"},
		{"Readlink of a file", str(r.Readlink(dir + "/file")), ""},
		{"Readlink of nothing", str(r.Readlink(dir + "/missing")), ""},
		{"Resolve of a chain", str(r.Resolve(dir + "/chain")), dir + "/target"},
		{"Resolve of a dangling link", str(r.Resolve(dir + "/dangling")), ""},
		{"Resolve of nothing", str(r.Resolve(dir + "/missing")), ""},
		{"FirstLine of a file", str(r.FirstLine(dir + "/file")), "first line"},
		{"FirstLine of nothing", str(r.FirstLine(dir + "/missing")), ""},
		{"FirstLine of a directory", str(r.FirstLine(dir)), ""},
		{"FirstLine of /proc/sys/kernel/ostype", str(r.FirstLine("/proc/sys/kernel/ostype")), "Linux"},
	} {
		if tt.got != tt.want {
			t.Errorf("%s: %q, want %q", tt.what, tt.got, tt.want)
		}
	}
	for p, want := range map[string]bool{dir + "/dangling": true, dir + "/missing": false} {
		if got, err := r.Exists(p); err != nil || got != want {
			t.Errorf("Exists(%s) = %v, %v; want %v", p, got, err, want)
		}
	}
}
