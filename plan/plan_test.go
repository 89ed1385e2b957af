package plan

import (
	"reflect"
	"strings"
	"testing"

	"github.com/nix-hive/nix-hive/eval"
)

func seedInventory() *eval.Inventory {
	in := func(name, system, store string) *eval.Instance {
		return &eval.Instance{Name: name, System: system, Store: store, User: "root", Port: 22, Host: name}
	}
	return &eval.Inventory{Instances: map[string]*eval.Instance{
		"portico": in("portico", "portico", ""),
		"storage": in("storage", "storage", ""),
		"www-1":   in("www-1", "www", "portico"),
		"www-2":   in("www-2", "www", "portico"),
		"www-3":   in("www-3", "www", "portico"),
		"cdn-1":   in("cdn-1", "www", "https://cache.example"),
		"cdn-2":   in("cdn-2", "www", "https://cache.example"),
	}}
}

var seedBuilt = map[string]eval.Built{
	"portico": {OutPath: "/nix/store/p"}, "storage": {OutPath: "/nix/store/s"}, "www": {OutPath: "/nix/store/w"},
}

func TestPlan(t *testing.T) {
	tests := []struct {
		name      string
		targets   []string
		waves     [][]string
		transfers []Transfer
		plWaves   [][]string
		sources   map[string]string
		err       string
	}{
		{
			name:      "seed: portico gets both closures, www hosts substitute",
			targets:   []string{"portico", "storage", "www-1", "www-2", "www-3"},
			transfers: []Transfer{{To: "portico", Paths: []string{"/nix/store/p", "/nix/store/w"}}, {To: "storage", Paths: []string{"/nix/store/s"}}},
			plWaves:   [][]string{{"portico", "storage", "www-1", "www-2", "www-3"}},
			sources:   map[string]string{"portico": "push", "www-1": "store:portico", "storage": "push"},
		},
		{
			name:      "store not targeted still receives, is not activated",
			targets:   []string{"www-2", "www-1"},
			transfers: []Transfer{{To: "portico", Paths: []string{"/nix/store/w"}}},
			plWaves:   [][]string{{"www-2", "www-1"}},
			sources:   map[string]string{"portico": "push", "www-2": "store:portico"},
		},
		{
			name:      "binary cache store gets one push",
			targets:   []string{"cdn-1", "cdn-2"},
			transfers: []Transfer{{To: "https://cache.example", Paths: []string{"/nix/store/w"}}},
			plWaves:   [][]string{{"cdn-1", "cdn-2"}},
			sources:   map[string]string{"cdn-1": "cache:https://cache.example"},
		},
		{
			name:      "store in a later wave moves before its consumer",
			targets:   []string{"www-1", "www-2", "portico"},
			waves:     [][]string{{"www-1"}, {"www-2", "portico"}},
			transfers: []Transfer{{To: "portico", Paths: []string{"/nix/store/w", "/nix/store/p"}}},
			plWaves:   [][]string{{"portico", "www-1"}, {"www-2"}},
		},
		{
			name:    "target missing from waves",
			targets: []string{"www-1", "www-2"},
			waves:   [][]string{{"www-1"}},
			err:     "targets in no wave: www-2",
		},
		{
			name:    "wave names a non-target",
			targets: []string{"www-1"},
			waves:   [][]string{{"www-1", "storage"}},
			err:     `"storage" is not a target`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := Make(seedInventory(), tt.targets, seedBuilt, tt.waves)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err = %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(p.Transfers, tt.transfers) {
				t.Errorf("transfers = %+v, want %+v", p.Transfers, tt.transfers)
			}
			if !reflect.DeepEqual(p.Waves, tt.plWaves) {
				t.Errorf("waves = %v, want %v", p.Waves, tt.plWaves)
			}
			for h, want := range tt.sources {
				s := p.Hosts[h].Source
				got := string(s.Kind)
				if s.From != "" {
					got += ":" + s.From
				}
				if got != want {
					t.Errorf("%s source = %s, want %s", h, got, want)
				}
			}
		})
	}
}

// A system's profiles travel with it: its store receives them for its
// consumers, which activate them after the system.
func TestPlanProfiles(t *testing.T) {
	inv := seedInventory()
	inv.Systems = map[string]*eval.System{"www": {Name: "www", Profiles: map[string]*eval.Profile{
		"home": {User: "alice", Activate: "activate"}, "tools": {User: "bob", Activate: "bin/activate"},
	}}}
	built := map[string]eval.Built{"www": {OutPath: "/nix/store/w", Profiles: map[string]string{"tools": "/nix/store/t", "home": "/nix/store/h"}}}
	p, err := Make(inv, []string{"www-1", "cdn-1"}, built, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := []eval.BuiltProfile{{Name: "home", User: "alice", Path: "/nix/store/h", Activate: "activate"}, {Name: "tools", User: "bob", Path: "/nix/store/t", Activate: "bin/activate"}}
	if got := p.Hosts["www-1"].Profiles; !reflect.DeepEqual(got, want) {
		t.Errorf("www-1's profiles: %+v, want %+v", got, want)
	}
	paths := []string{"/nix/store/w", "/nix/store/h", "/nix/store/t"}
	if got := p.Transfers; !reflect.DeepEqual(got, []Transfer{{To: "portico", Paths: paths}, {To: "https://cache.example", Paths: paths}}) {
		t.Errorf("transfers: %+v, want the system and its profiles to portico and the cache", got)
	}
	delete(built["www"].Profiles, "tools")
	if _, err := Make(inv, []string{"www-1"}, built, nil); err == nil || !strings.Contains(err.Error(), "system www has profiles its build lacks") {
		t.Errorf("a build without a profile the hive names: %v", err)
	}
}
