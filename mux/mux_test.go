package mux

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/nix-hive/nix-hive/lab"
	"github.com/nix-hive/nix-hive/lab/labtest"
	"github.com/nix-hive/nix-hive/transport"
)

// hermetic keeps the user's real agent, keys and configs out of a test.
func hermetic(t *testing.T) {
	t.Helper()
	t.Setenv("HOME", t.TempDir())
	t.Setenv("SSH_AUTH_SOCK", "")
}

func testCtx(t *testing.T) context.Context {
	// Generous: only a hang would hit it, and a hang is the failure.
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// labConfig is the lab's endpoints, pinned, as a holder's config.
func labConfig(t *testing.T, l *lab.Lab) transport.Config {
	eps := map[string]transport.Endpoint{}
	for _, h := range l.Hosts {
		eps[h.Name] = transport.Endpoint{Name: h.Name, Host: h.Addr, Port: h.Port, User: "root", Jump: h.Jump,
			HostKeys: []string{h.HostKey}, Options: map[string]string{"IdentityFile": l.ClientKey}}
	}
	return transport.Config{Endpoints: eps, UserConfig: "none", KnownHostsFiles: []string{},
		AcceptedKnownHosts: filepath.Join(t.TempDir(), "accepted")}
}

// The holder ends once it has been idle long enough after its last
// client left.
func TestIdle(t *testing.T) {
	hermetic(t)
	l := labtest.New(t, lab.Config{Hosts: 1})
	ctx := testCtx(t)
	cfg := labConfig(t, l)
	t.Setenv("XDG_RUNTIME_DIR", t.TempDir())
	if _, err := Dir(true); err != nil {
		t.Fatal(err)
	}
	sock, _ := Socket(cfg)
	s, err := NewServer(cfg, 1, t.Logf) // 1ns: as soon as no client is connected
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
	m, err := Dial(sock, 0)
	if err != nil {
		t.Fatal(err)
	}
	c := cfg
	c.Holder = m
	p, err := transport.NewPool(c)
	if err != nil {
		t.Fatalf("NewPool: %v", err)
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

// Dir refuses a directory that someone else could use to pose as the
// holder.
func TestDir(t *testing.T) {
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
			dir, err := Dir(tt.create)
			switch {
			case tt.wantErr == "" && (err != nil || dir != want):
				t.Errorf("Dir = %q, %v; want %q", dir, err, want)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), want)):
				t.Errorf("Dir = %q, %v; want an error naming %s and saying %q", dir, err, want, tt.wantErr)
			}
			if _, serr := Socket(transport.Config{}); (serr != nil) != (tt.wantErr != "") {
				t.Errorf("Socket error %v, Dir error %v: they should agree", serr, err)
			}
		})
	}
}

// A holder's socket name follows the endpoints but not the timeouts.
func TestSocketName(t *testing.T) {
	t.Setenv("XDG_RUNTIME_DIR", t.TempDir())
	base := transport.Config{Endpoints: map[string]transport.Endpoint{"a": {Name: "a", Host: "10.0.0.1"}}, UserConfig: "none"}
	name := func(cfg transport.Config) string {
		s, err := Socket(cfg)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	moved := base
	moved.Endpoints = map[string]transport.Endpoint{"a": {Name: "a", Host: "10.0.0.2"}}
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
// transport.Config itself: holders that run now are not taken for
// another version of their hive.
func TestConfigUnchanged(t *testing.T) {
	cfg := transport.Config{
		Endpoints: map[string]transport.Endpoint{
			"a": {Name: "a", Host: "10.0.0.1", Port: 2222, User: "ops", HostKeys: []string{"ssh-ed25519 AAAA"}, Jump: "b", Options: map[string]string{"IdentityFile": "~/.ssh/k"}},
			"b": {Host: "b.example"},
		},
		KnownHostsFiles: []string{"/kh"}, HostCAs: []string{"ssh-ed25519 CA"}, AcceptNewHostKeys: true,
		AcceptedKnownHosts: "/acc", ConnectTimeout: 3 * time.Second, KeepAlive: 3 * time.Second, KeepAliveTimeout: 9 * time.Second,
		IdleKeepAlive: time.Minute, UserConfig: "none", BatchMode: true, RawCommands: true, Hive: "/hive",
		Passphrase: func(string) ([]byte, error) { return nil, nil },
	}
	const wantJSON = `{"Protocol":"nix-hive-mux-2","Endpoints":{"a":{"Name":"a","Host":"10.0.0.1","Port":2222,"User":"ops","HostKeys":["ssh-ed25519 AAAA"],"Jump":"b","Options":{"IdentityFile":"~/.ssh/k"}},"b":{"Name":"","Host":"b.example","Port":0,"User":"","HostKeys":null,"Jump":"","Options":null}},"KnownHostsFiles":["/kh"],"HostCAs":["ssh-ed25519 CA"],"AcceptNewHostKeys":true,"AcceptedKnownHosts":"/acc","ConnectTimeout":3000000000,"KeepAlive":3000000000,"KeepAliveTimeout":9000000000,"UserConfig":"none","UserConfigSum":"","Hive":"/hive"}`
	b, err := encodeConfig(cfg)
	if err != nil || string(b) != wantJSON {
		t.Errorf("encodeConfig = %s, %v; want %s", b, err, wantJSON)
	}
	if sum := configOf(cfg).sum(); sum != "d33970cff78e145d904ddb3f" {
		t.Errorf("sum = %s; want d33970cff78e145d904ddb3f", sum)
	}
	bare := transport.Config{UserConfig: "none", KnownHostsFiles: []string{}, AcceptedKnownHosts: "/x"}
	if sum := configOf(bare).sum(); sum != "7ac742dfc7569cded6ce2434" {
		t.Errorf("sum of a bare config = %s; want 7ac742dfc7569cded6ce2434", sum)
	}
	got, err := decodeConfig(b)
	if err != nil {
		t.Fatal(err)
	}
	want := cfg
	want.IdleKeepAlive, want.RawCommands, want.Passphrase = 0, false, nil
	if got.Passphrase != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("decodeConfig = %+v; want %+v", got, want)
	}
}
