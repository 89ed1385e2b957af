package state

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestLoadSave(t *testing.T) {
	p := filepath.Join(t.TempDir(), "hive.state")
	f, err := Load(p)
	if err != nil || len(f.Systems) != 0 {
		t.Fatalf("missing file: %v %+v", err, f)
	}
	now := time.Now().UTC().Truncate(time.Second)
	f.SetSystem("www", System{DrvPath: "/nix/store/a.drv", OutPath: "/nix/store/a", BuiltAt: now})
	f.SetInstance("www-1", Instance{System: "www", OutPath: "/nix/store/a", Step: "done", Status: "ok", Time: now})
	if err := f.Save(); err != nil {
		t.Fatal(err)
	}
	g, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if s, _ := g.System("www"); s.OutPath != "/nix/store/a" || !s.BuiltAt.Equal(now) {
		t.Errorf("system after reload: %+v", s)
	}
	if i, _ := g.Instance("www-1"); i.Status != "ok" {
		t.Errorf("instance after reload: %+v", i)
	}
	// no temporary files left beside it
	ents, _ := os.ReadDir(filepath.Dir(p))
	if len(ents) != 1 {
		t.Errorf("files beside the state: %v", ents)
	}
}

func TestLoadErrors(t *testing.T) {
	tests := []struct{ name, content, want string }{
		{"garbage", "{not json", "delete it to start over"},
		{"newer version", `{"version": 99}`, "newer than this nix-hive understands"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "hive.state")
			os.WriteFile(p, []byte(tt.content), 0o644)
			_, err := Load(p)
			if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), p) {
				t.Errorf("err = %v, want %q naming the file", err, tt.want)
			}
		})
	}
}
