package state

import (
	"fmt"
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
			if err := os.WriteFile(p, []byte(tt.content), 0o644); err != nil {
				t.Fatal(err)
			}
			_, err := Load(p)
			if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), p) {
				t.Errorf("err = %v, want %q naming the file", err, tt.want)
			}
		})
	}
}

// Two runs that loaded the same file and record different instances keep
// both records, however their saves interleave; a record both set is the
// last saver's.
func TestSaveMergesConcurrentRuns(t *testing.T) {
	p := filepath.Join(t.TempDir(), "hive.state")
	a, _ := Load(p)
	b, _ := Load(p)
	done := make(chan error, 2)
	for i, f := range []*File{a, b} {
		go func() {
			for j := 0; j < 20; j++ {
				f.SetInstance(fmt.Sprintf("run%d-host-%d", i, j), Instance{Status: "ok"})
				f.SetInstance("shared", Instance{Status: fmt.Sprintf("run%d", i)})
				if err := f.Save(); err != nil {
					done <- err
					return
				}
			}
			done <- nil
		}()
	}
	for range 2 {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	got, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		for j := 0; j < 20; j++ {
			if _, ok := got.Instance(fmt.Sprintf("run%d-host-%d", i, j)); !ok {
				t.Errorf("record run%d-host-%d lost", i, j)
			}
		}
	}
	if s := got.Instances["shared"].Status; s != "run0" && s != "run1" {
		t.Errorf("shared record: %q", s)
	}
	// Each run's view now includes the other's records.
	if _, ok := a.Instance("run1-host-0"); !ok {
		if _, ok := b.Instance("run0-host-0"); !ok {
			t.Errorf("neither run sees the other's records after saving")
		}
	}
}
