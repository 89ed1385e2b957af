package transport

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func writeFile(t *testing.T, path, content string) string {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestUserConfigDefaults(t *testing.T) {
	home := hermetic(t)
	uc := writeFile(t, filepath.Join(home, "cfg"), `
Host web-*
	User alice
	Port 2200
	IdentityFile ~/.ssh/web
	IdentitiesOnly yes
Host alias
	HostName %h.example.org
Host *
	IdentityFile ~/.ssh/all
`)
	tests := []struct {
		name string
		ep   Endpoint
		want Effective
	}{
		{"web-1", Endpoint{Host: "10.0.0.1"}, Effective{HostName: "10.0.0.1", User: "alice", Port: 2200,
			IdentityFiles: []string{home + "/.ssh/web", home + "/.ssh/all"}, IdentitiesOnly: true}},
		{"web-2", Endpoint{Host: "10.0.0.2", User: "root", Port: 22, Options: map[string]string{"IdentityFile": "/k1,/k2"}},
			Effective{HostName: "10.0.0.2", User: "root", Port: 22, IdentityFiles: []string{"/k1", "/k2"}, IdentitiesOnly: true}},
		{"alias", Endpoint{}, Effective{HostName: "alias.example.org", User: "root", Port: 22, IdentityFiles: []string{home + "/.ssh/all"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := NewPool(Config{UserConfig: uc, Endpoints: map[string]Endpoint{tt.name: tt.ep}})
			if err != nil {
				t.Fatal(err)
			}
			got, _ := p.Hosts().Resolve(tt.name)
			tt.want.Name = tt.name
			if got.HostName != tt.want.HostName || got.User != tt.want.User || got.Port != tt.want.Port ||
				!slices.Equal(got.IdentityFiles, tt.want.IdentityFiles) || got.IdentitiesOnly != tt.want.IdentitiesOnly {
				t.Errorf("Resolve = %+v; want %+v", got, tt.want)
			}
		})
	}
}

func TestUnparsableUserConfigIsAWarning(t *testing.T) {
	home := hermetic(t)
	uc := writeFile(t, filepath.Join(home, "cfg"), "Match exec \"true\"\n\tUser x\n")
	p, err := NewPool(Config{UserConfig: uc, Endpoints: map[string]Endpoint{"a": {}}})
	if err != nil {
		t.Fatalf("NewPool: %v", err)
	}
	if w := p.Hosts().Warnings(); len(w) != 1 || !strings.Contains(w[0], uc) {
		t.Errorf("Warnings = %q; want one naming %s", w, uc)
	}
}

func TestAlgorithmList(t *testing.T) {
	defaults := []string{"c", "a1", "a2", "x"}
	supported := []string{"a1", "a2", "b", "c", "x"}
	tests := []struct {
		value   string
		want    []string
		wantErr bool
	}{
		{"", []string{"c", "a1", "a2", "x"}, false},
		{"a2,b", []string{"a2", "b"}, false},
		{"a2, b ,openssh-only", []string{"a2", "b"}, false}, // what only OpenSSH implements is left out
		{"+b,c", []string{"c", "a1", "a2", "x", "b"}, false},
		{"-a*", []string{"c", "x"}, false},
		{"-c,x", []string{"a1", "a2"}, false},
		{"-?", []string{"a1", "a2"}, false},
		{"^a2,b", []string{"a2", "b", "c", "a1", "x"}, false},
		{"openssh-only", nil, true}, // never the defaults instead
		{"-*", nil, true},
	}
	for _, tt := range tests {
		got, err := algorithmList(tt.value, defaults, supported)
		if (err != nil) != tt.wantErr || !slices.Equal(got, tt.want) {
			t.Errorf("algorithmList(%q) = %v, %v; want %v (error: %v)", tt.value, got, err, tt.want, tt.wantErr)
		}
	}
}

// The hive's Ciphers, KexAlgorithms and MACs, else the user's, shape
// what nix-hive's client offers; one that leaves nothing it implements is
// an error naming the instance, the option and where it came from.
func TestAlgorithmOptions(t *testing.T) {
	home := hermetic(t)
	uc := writeFile(t, filepath.Join(home, "cfg"), `
Host *
	Ciphers -chacha20*
	KexAlgorithms sntrup761x25519-sha512@openssh.com,curve25519-sha256
Host bad
	MACs hmac-md5
`)
	eps := map[string]Endpoint{
		"web-1": {Host: "10.0.0.1"},
		"web-2": {Host: "10.0.0.2", Options: map[string]string{"Ciphers": "aes256-gcm@openssh.com", "MACs": "^hmac-sha2-512-etm@openssh.com"}},
	}
	p, err := NewPool(Config{UserConfig: uc, Endpoints: eps})
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name             string
		ciphers, kex, ms []string
	}{
		{"web-1", []string{"aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "aes128-ctr", "aes256-ctr"},
			[]string{"curve25519-sha256"}, macAlgorithms},
		{"web-2", []string{"aes256-gcm@openssh.com"}, []string{"curve25519-sha256"},
			[]string{"hmac-sha2-512-etm@openssh.com", "hmac-sha2-256-etm@openssh.com", "hmac-sha2-256", "hmac-sha2-512"}},
	} {
		got, err := p.Hosts().Resolve(tt.name)
		if err != nil || !slices.Equal(got.Ciphers, tt.ciphers) || !slices.Equal(got.KexAlgorithms, tt.kex) || !slices.Equal(got.MACs, tt.ms) {
			t.Errorf("%s: Resolve = ciphers %v, kex %v, MACs %v (%v); want %v, %v, %v", tt.name, got.Ciphers, got.KexAlgorithms, got.MACs, err, tt.ciphers, tt.kex, tt.ms)
		}
	}
	_, err = NewPool(Config{UserConfig: uc, Endpoints: map[string]Endpoint{"bad": {Host: "10.0.0.3"}}})
	if err == nil || !strings.Contains(err.Error(), `instance bad: MACs "hmac-md5" (`+uc+`)`) {
		t.Errorf("a user config leaving no MAC: NewPool = %v; want an error naming the instance, the option and the config", err)
	}
}
