package deploy

import (
	"reflect"
	"strings"
	"testing"

	"github.com/nix-hive/nix-hive/eval"
	"github.com/nix-hive/nix-hive/shell"
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

func TestRemoteCommandsQuote(t *testing.T) {
	evil := "/nix/store/x-it's $(rm -rf /)"
	sudo := escalation{prefix: "sudo"}
	cmd := program(startProgram, true, "deploy", sudo, "id", "", "1", "gzip", string(GoalSwitch), evil, "30", "60")
	if !strings.Contains(cmd, `'/nix/store/x-it'\''s $(rm -rf /)'`) {
		t.Errorf("path not quoted as one word:\n%s", cmd)
	}
	if !strings.HasPrefix(cmd, "sudo sh -c ") {
		t.Errorf("no privilege command for a non-root user:\n%s", cmd)
	}
	if c := program(confirmProgram, true, "root", sudo, "id"); strings.Contains(c, "sudo") {
		t.Errorf("root needs no sudo:\n%s", c)
	}
	if !strings.Contains(cmd, shell.Quote(compact(startProgram))) || strings.Contains(cmd, "switch-to-configuration") {
		t.Errorf("the start program travels as one quoted word, the job script on stdin only:\n%s", cmd)
	}
}

func TestParseHostState(t *testing.T) {
	hs := parseHostState("active=/nix/store/a\nlink=system-7-link\nprofile=/nix/store/b\nlast=J switch /nix/store/b rolled-back\nrunning=K\nboot=B\nrebootmark=\n")
	want := HostState{Active: "/nix/store/a", Generation: 7, Profile: "/nix/store/b", Running: "K", BootID: "B",
		Last: &LastActivation{Job: "J", Goal: GoalSwitch, Path: "/nix/store/b", Status: "rolled-back"}}
	if !reflect.DeepEqual(hs, want) {
		t.Fatalf("%+v\nwant %+v", hs, want)
	}
	if hs := parseHostState("active=\nlink=\nlast=\n"); hs.Generation != 0 || hs.Active != "" || hs.Last != nil {
		t.Fatalf("%+v", hs)
	}
}

func TestParseJobState(t *testing.T) {
	tests := []struct {
		out  string
		want jobState
	}{
		{"running\n", jobState{phase: "running"}},
		{"activated\n", jobState{phase: "activated"}},
		{"done ok \n", jobState{phase: "done", status: "ok"}},
		{"done rolled-back not confirmed within 30s\nnix-hive: returning\n", jobState{phase: "done", status: "rolled-back", reason: "not confirmed within 30s", log: "nix-hive: returning"}},
		{"gone\n", jobState{phase: "gone"}},
	}
	for _, tt := range tests {
		if got := parseJobState(tt.out); got != tt.want {
			t.Errorf("parseJobState(%q) = %+v, want %+v", tt.out, got, tt.want)
		}
	}
}
