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
