package hostkey

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

func newSigner(t *testing.T) ssh.Signer {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sg, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return sg
}

func writeFile(t *testing.T, path, content string) string {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// policy is the Policy transport makes for instance www-1 at
// 127.0.0.1:2222 without pins: known_hosts looked up by address and by
// alias, accepted keys going to dir/accepted.
func policy(dir string, files ...string) *Policy {
	return &Policy{
		Instance:   "www-1",
		Alias:      "www-1",
		Addr:       "127.0.0.1:2222",
		HostName:   "127.0.0.1",
		Names:      []string{"127.0.0.1:2222", "www-1:22"},
		Files:      append([]string{filepath.Join(dir, "accepted")}, files...),
		AcceptFile: filepath.Join(dir, "accepted"),
		AcceptMu:   new(sync.Mutex),
	}
}

// check runs p's callback on the key a host presents, as a handshake
// would.
func check(t *testing.T, p *Policy, got ssh.PublicKey) error {
	t.Helper()
	cb, _, err := p.Callback()
	if err != nil {
		t.Fatalf("Callback: %v", err)
	}
	return cb("ignored:22", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 2222}, got)
}

func TestCallback(t *testing.T) {
	host := newSigner(t).PublicKey()
	hostKey := AuthorizedKey(host)
	other := AuthorizedKey(newSigner(t).PublicKey())

	tests := []struct {
		name       string
		pinned     []string
		knownHosts string // %s is replaced by the host's key
		accept     bool
		wantErr    error
		wantInMsg  []string
		wantRecord bool
	}{
		{name: "pinned key matches", pinned: []string{hostKey}},
		{name: "one of several pinned keys matches", pinned: []string{other, hostKey}},
		{name: "pinned key differs", pinned: []string{other}, wantErr: ErrMismatch,
			wantInMsg: []string{"host key for www-1 (127.0.0.1:2222) does not match", "SHA256:", "(hostKey)",
				"pin its new key with hostKey = \"" + hostKey + "\""}},
		{name: "pinned key wins over known_hosts", pinned: []string{other}, knownHosts: "[127.0.0.1]:2222 %s\n", wantErr: ErrMismatch},
		{name: "pinned key differs, accepting new keys", pinned: []string{other}, accept: true, wantErr: ErrMismatch},
		{name: "known_hosts by address", knownHosts: "[127.0.0.1]:2222 %s\n"},
		{name: "known_hosts by alias", knownHosts: "www-1 %s\n"},
		{name: "known_hosts hashed entry", knownHosts: knownhosts.HashHostname("[127.0.0.1]:2222") + " %s\n"},
		{name: "known_hosts for another port", knownHosts: "127.0.0.1 %s\n", wantErr: ErrUnknown},
		{name: "known_hosts has another key", knownHosts: "[127.0.0.1]:2222 " + other + "\n", wantErr: ErrMismatch,
			wantInMsg: []string{"does not match", "known_hosts:1", "ED25519 SHA256:"}},
		{name: "revoked key", knownHosts: "@revoked * %s\n", accept: true, wantErr: ErrMismatch,
			wantInMsg: []string{"is revoked in", "known_hosts:1", "refusing to connect"}},
		{name: "unknown", wantErr: ErrUnknown,
			wantInMsg: []string{"host key for www-1 (127.0.0.1:2222) is unknown: ED25519 SHA256:",
				"hostKey = \"" + hostKey + "\"", "--accept-new-host-keys"}},
		{name: "unknown accepted when asked", accept: true, wantRecord: true},
		{name: "mismatch refused even when accepting new keys", knownHosts: "[127.0.0.1]:2222 " + other + "\n", accept: true, wantErr: ErrMismatch},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			kh := filepath.Join(dir, "known_hosts")
			if tt.knownHosts != "" {
				line := tt.knownHosts
				if strings.Contains(line, "%s") {
					line = strings.Replace(line, "%s", hostKey, 1)
				}
				writeFile(t, kh, line)
			}
			p := policy(dir, kh)
			p.Accept = tt.accept
			for _, k := range tt.pinned {
				pk, _, _, _, err := ssh.ParseAuthorizedKey([]byte(k))
				if err != nil {
					t.Fatal(err)
				}
				p.Pinned = append(p.Pinned, pk)
			}
			err := check(t, p, host)
			if tt.wantErr == nil && err != nil || tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Fatalf("check = %v; want %v", err, tt.wantErr)
			}
			if err != nil {
				var e *Error
				if !errors.As(err, &e) || e.Instance != "www-1" || AuthorizedKey(e.Got) != hostKey {
					t.Errorf("error %#v is no *Error for www-1 and the host's key", err)
				}
			}
			for _, s := range tt.wantInMsg {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not mention %q", err, s)
				}
			}
			rec, _ := os.ReadFile(p.AcceptFile)
			if tt.wantRecord != (len(rec) > 0) {
				t.Errorf("accepted file = %q; want a record: %v", rec, tt.wantRecord)
			}
			if tt.wantRecord {
				// Under the instance's alias, not the address: the key
				// belongs to www-1, wherever it lives.
				if want := "www-1 " + hostKey + "\n"; string(rec) != want {
					t.Errorf("recorded %q; want %q", rec, want)
				}
				// The next check knows the key without accepting anything.
				q := policy(dir)
				if err := check(t, q, host); err != nil {
					t.Errorf("second check with the recorded key: %v", err)
				}
				if keys, err := q.Known(); err != nil || len(keys) != 1 || AuthorizedKey(keys[0]) != hostKey {
					t.Errorf("Known = %v, %v; want the recorded key", keys, err)
				}
			}
		})
	}
}

// TestRecordKeepsLinesApart: a key accepted into a file whose last line
// lacks its newline starts a line of its own.
func TestRecordKeepsLinesApart(t *testing.T) {
	dir := t.TempDir()
	other := newSigner(t).PublicKey()
	p := policy(dir)
	writeFile(t, p.AcceptFile, "www-2 "+AuthorizedKey(other))
	p.Accept = true
	host := newSigner(t).PublicKey()
	if err := check(t, p, host); err != nil {
		t.Fatal(err)
	}
	rec, _ := os.ReadFile(p.AcceptFile)
	if want := "www-2 " + AuthorizedKey(other) + "\nwww-1 " + AuthorizedKey(host) + "\n"; string(rec) != want {
		t.Errorf("accepted file = %q; want %q", rec, want)
	}
}

// hostCert is host's key certified by ca for principals, valid from an
// hour ago until until.
func hostCert(t *testing.T, ca ssh.Signer, host ssh.PublicKey, until time.Time, principals ...string) *ssh.Certificate {
	t.Helper()
	c := &ssh.Certificate{Key: host, CertType: ssh.HostCert, KeyId: "test", ValidPrincipals: principals,
		ValidAfter: uint64(time.Now().Add(-time.Hour).Unix()), ValidBefore: uint64(until.Unix())}
	if err := c.SignCert(rand.Reader, ca); err != nil {
		t.Fatal(err)
	}
	return c
}

func TestCertificates(t *testing.T) {
	ca := newSigner(t)
	host := newSigner(t).PublicKey()
	later := time.Now().Add(time.Hour)
	good := hostCert(t, ca, host, later, "web.example")
	tests := []struct {
		name      string
		hiveCA    bool   // the hive's hostCAs name ca
		knownCA   string // a known_hosts line; %s is ca
		pinned    bool   // the host's plain key is pinned
		accept    bool
		cert      *ssh.Certificate
		certified bool
		wantErr   error
		wantInMsg []string
	}{
		{name: "hive hostCA", hiveCA: true, cert: good, certified: true},
		{name: "@cert-authority in known_hosts", knownCA: "@cert-authority *.example %s\n", cert: good, certified: true},
		{name: "@cert-authority for other hosts", knownCA: "@cert-authority *.other %s\n", cert: good, certified: true, wantErr: ErrUnknown},
		{name: "no authority", cert: good, wantErr: ErrUnknown,
			wantInMsg: []string{"its host certificate was refused: no certificate authority is trusted for it"}},
		{name: "another principal", hiveCA: true, cert: hostCert(t, ca, host, later, "db.example"), certified: true, wantErr: ErrUnknown,
			wantInMsg: []string{"its host certificate was refused", "web.example"}},
		{name: "expired", hiveCA: true, cert: hostCert(t, ca, host, time.Now().Add(-time.Minute), "web.example"), certified: true, wantErr: ErrUnknown},
		{name: "another authority", hiveCA: true, cert: hostCert(t, newSigner(t), host, later, "web.example"), certified: true, wantErr: ErrUnknown},
		{name: "refused certificate never accepted as new", hiveCA: true, accept: true,
			cert: hostCert(t, newSigner(t), host, later, "web.example"), certified: true, wantErr: ErrUnknown},
		{name: "pins: no authority, the key inside is checked", hiveCA: true, pinned: true, cert: hostCert(t, ca, host, later, "db.example")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			p := policy(dir)
			p.Addr, p.HostName, p.Accept = "192.0.2.7:22", "web.example", tt.accept
			if tt.hiveCA {
				cas, err := ParseCAs([]string{AuthorizedKey(ca.PublicKey()) + " host CA"})
				if err != nil {
					t.Fatal(err)
				}
				p.CAs = cas
			}
			if tt.knownCA != "" {
				p.Files = append(p.Files, writeFile(t, filepath.Join(dir, "known_hosts"), strings.Replace(tt.knownCA, "%s", AuthorizedKey(ca.PublicKey()), 1)))
			}
			if tt.pinned {
				p.Pinned = []ssh.PublicKey{host}
			}
			if ok, err := p.Certified(); ok != tt.certified || err != nil {
				t.Errorf("Certified = %v, %v; want %v", ok, err, tt.certified)
			}
			_, algos, err := p.Callback()
			if err != nil {
				t.Fatal(err)
			}
			if certAlgo := slices.Contains(algos, ssh.CertAlgoED25519v01); certAlgo != tt.certified {
				t.Errorf("algorithms %v; want certificates asked for: %v", algos, tt.certified)
			}
			err = check(t, p, tt.cert)
			if tt.wantErr == nil && err != nil || tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Fatalf("check = %v; want %v", err, tt.wantErr)
			}
			for _, s := range tt.wantInMsg {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not mention %q", err, s)
				}
			}
			if rec, _ := os.ReadFile(p.AcceptFile); len(rec) > 0 {
				t.Errorf("accepted file = %q; a certificate's key was recorded", rec)
			}
		})
	}
}

func TestAlgorithms(t *testing.T) {
	ed := newSigner(t).PublicKey()
	rk, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	rsaKey, err := ssh.NewPublicKey(&rk.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	ek, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ecKey, err := ssh.NewPublicKey(&ek.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	if got := algorithms(nil); got != nil {
		t.Errorf("algorithms(nil) = %v; want nil (the defaults)", got)
	}
	got := algorithms([]ssh.PublicKey{ed, rsaKey, ed})
	want := []string{ssh.KeyAlgoED25519, ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256, ssh.KeyAlgoRSA}
	if !slices.Equal(got, want) {
		t.Errorf("algorithms = %v; want %v", got, want)
	}
	if got, want := certAlgorithms([]ssh.PublicKey{ecKey}), []string{ssh.CertAlgoECDSA256v01}; !slices.Equal(got, want) {
		t.Errorf("certAlgorithms = %v; want %v", got, want)
	}
	if got := certAlgorithms(nil); len(got) != 6 {
		t.Errorf("certAlgorithms(nil) = %v; want all six", got)
	}
	for i, k := range []ssh.PublicKey{ed, rsaKey, ecKey} {
		if got, want := keyTypeLabel(k), []string{"ED25519", "RSA", "ECDSA"}[i]; got != want {
			t.Errorf("keyTypeLabel(%s) = %q; want %q", k.Type(), got, want)
		}
	}
}

func TestParseCAs(t *testing.T) {
	if _, err := ParseCAs([]string{AuthorizedKey(newSigner(t).PublicKey()), "ssh-ed25519 nope"}); err == nil ||
		!strings.HasPrefix(err.Error(), `hostCA #2 "ssh-ed25519 nope": `) || !strings.HasSuffix(err.Error(), `; expected "ssh-ed25519 AAAA..."`) {
		t.Errorf("ParseCAs = %v; want hostCA #2's error", err)
	}
}

func TestPortOf(t *testing.T) {
	for addr, want := range map[string]int{"10.0.0.1:2222": 2222, "[::1]:22": 22, "web": 22, "web:ssh": 22} {
		if got := portOf(addr); got != want {
			t.Errorf("portOf(%q) = %d; want %d", addr, got, want)
		}
	}
	if got := joinHostPort("::1", 2222); got != "[::1]:2222" {
		t.Errorf("joinHostPort = %q", got)
	}
}
