package eval

import (
	"reflect"
	"strings"
	"testing"
)

func TestSelect(t *testing.T) {
	inv := &Inventory{Instances: map[string]*Instance{
		"portico":   {Name: "portico", Tags: []string{"edge"}},
		"storage":   {Name: "storage", Tags: []string{"storage"}},
		"www-1":     {Name: "www-1", Tags: []string{"web", "canary"}},
		"www-2":     {Name: "www-2", Tags: []string{"web"}},
		"www-10":    {Name: "www-10", Tags: []string{"web"}},
		"rack/db-1": {Name: "rack/db-1", Tags: []string{"db/primary"}},
	}}
	tests := []struct {
		name     string
		patterns []string
		want     []string
		err      string
	}{
		{"all by default, natural order", nil, []string{"portico", "rack/db-1", "storage", "www-1", "www-2", "www-10"}, ""},
		{"explicit first, duplicates collapse", []string{"*", "portico"}, []string{"portico", "rack/db-1", "storage", "www-1", "www-2", "www-10"}, ""},
		{"* crosses /", []string{"r*1"}, []string{"rack/db-1"}, ""},
		{"? and classes match /", []string{"rack?db-[1]", "rack[/]db-1"}, []string{"rack/db-1"}, ""},
		{"tag glob crosses /", []string{"@db*"}, []string{"rack/db-1"}, ""},
		{"explicit order kept", []string{"www-2", "www-1"}, []string{"www-2", "www-1"}, ""},
		{"glob", []string{"www-?"}, []string{"www-1", "www-2"}, ""},
		{"tag", []string{"@canary"}, []string{"www-1"}, ""},
		{"tag glob", []string{"@st*"}, []string{"storage"}, ""},
		{"explicit then tag", []string{"@web", "portico"}, []string{"portico", "www-1", "www-2", "www-10"}, ""},
		{"unknown name", []string{"portco"}, nil, `target "portco" matches no instance`},
		{"empty tag match", []string{"@db"}, nil, `target "@db" matches no instance`},
		{"bad glob", []string{"www-["}, nil, `target "www-["`},
		{"empty", []string{"@"}, nil, "empty pattern"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := inv.Select(tt.patterns)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("Select(%q) error = %v, want %q", tt.patterns, err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("Select(%q) = %q, want %q", tt.patterns, got, tt.want)
			}
		})
	}
}
