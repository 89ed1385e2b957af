package host

import (
	"errors"
	"reflect"
	"testing"

	"github.com/nix-hive/nix-hive/transport"
)

// fakeFiles is a host's files as the sftp reader answers them: links,
// first lines, and paths whose reads fail the session.
type fakeFiles struct {
	links, lines map[string]string
	broken       map[string]bool
}

func (f fakeFiles) err(p string) error {
	if f.broken[p] {
		return errors.New("connection lost")
	}
	return nil
}

func (f fakeFiles) Readlink(p string) (string, error) { return f.links[p], f.err(p) }
func (f fakeFiles) Resolve(p string) (string, error) {
	for i := 0; i < 8; i++ {
		t, ok := f.links[p]
		if !ok {
			break
		}
		if t[0] != '/' {
			t = "/nix/var/nix/profiles/" + t
		}
		p = t
	}
	return p, f.err(p)
}
func (f fakeFiles) Exists(p string) (bool, error) {
	_, line := f.lines[p]
	_, link := f.links[p]
	return line || link, f.err(p)
}
func (f fakeFiles) FirstLine(p string) (string, error) { return f.lines[p], f.err(p) }
func (f fakeFiles) Batch(qs []transport.FileQuery) ([]transport.FileAnswer, error) {
	return transport.BatchOf(f, qs, false)
}

func TestReadState(t *testing.T) {
	const sys = "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-nixos-system-a"
	links := map[string]string{
		"/run/current-system":                 sys,
		"/nix/var/nix/profiles/system":        "system-3-link",
		"/nix/var/nix/profiles/system-3-link": sys,
	}
	with := func(extra map[string]string) map[string]string {
		m := map[string]string{"/proc/sys/kernel/random/boot_id": "B", "/nix/var/nix-hive/last": "J switch " + sys + " ok"}
		for k, v := range extra {
			m[k] = v
		}
		return m
	}
	tests := []struct {
		name      string
		f         fakeFiles
		wantExact bool
		wantErr   bool
	}{
		{"no activation lock", fakeFiles{links: links, lines: with(nil)}, true, false},
		{"the job ended", fakeFiles{links: links, lines: with(map[string]string{
			"/run/nix-hive/activation.lock": "", "/run/nix-hive/current": "J", "/run/nix-hive/jobs/J/state": "done ok"})}, true, false},
		{"the job runs", fakeFiles{links: links, lines: with(map[string]string{
			"/run/nix-hive/activation.lock": "", "/run/nix-hive/current": "J", "/run/nix-hive/jobs/J/state": "activated"})}, false, false},
		{"the job's state is not written yet", fakeFiles{links: links, lines: with(map[string]string{
			"/run/nix-hive/activation.lock": "", "/run/nix-hive/current": "J"})}, false, false},
		{"a job id that is a path", fakeFiles{links: links, lines: with(map[string]string{
			"/run/nix-hive/activation.lock": "", "/run/nix-hive/current": "../../x", "/run/nix-hive/jobs/../../x/state": "done ok"})}, false, false},
		{"the session fails", fakeFiles{links: links, lines: with(nil), broken: map[string]bool{"/run/current-system": true}}, false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hs, exact, _, err := ReadState(tt.f, false)
			if exact != tt.wantExact || (err != nil) != tt.wantErr {
				t.Fatalf("exact %v, error %v; want exact %v, error %v", exact, err, tt.wantExact, tt.wantErr)
			}
			if !exact {
				return
			}
			want := State{Active: sys, Generation: 3, Profile: sys, BootID: "B",
				Last: &LastActivation{Job: "J", Goal: "switch", Path: sys, Status: "ok"}}
			if hs.Active != want.Active || hs.Generation != want.Generation || hs.Profile != want.Profile ||
				hs.BootID != want.BootID || hs.Last == nil || *hs.Last != *want.Last || hs.Running != "" {
				t.Errorf("got %+v (last %+v), want %+v", hs, hs.Last, want)
			}
		})
	}
}

func TestParseState(t *testing.T) {
	hs := parseState("active=/nix/store/a\nlink=system-7-link\nprofile=/nix/store/b\nlast=J switch /nix/store/b rolled-back\nrunning=K\nboot=B\nrebootmark=\n")
	want := State{Active: "/nix/store/a", Generation: 7, Profile: "/nix/store/b", Running: "K", BootID: "B",
		Last: &LastActivation{Job: "J", Goal: GoalSwitch, Path: "/nix/store/b", Status: "rolled-back"}}
	if !reflect.DeepEqual(hs, want) {
		t.Fatalf("%+v\nwant %+v", hs, want)
	}
	if hs := parseState("active=\nlink=\nlast=\n"); hs.Generation != 0 || hs.Active != "" || hs.Last != nil {
		t.Fatalf("%+v", hs)
	}
}
