package main

import (
	"reflect"
	"testing"

	"github.com/nix-hive/nix-hive/lab"
)

// A host's processes are the pids allocated between the readings less
// the reader's own; a counter that wrapped is counted past pid_max.
func TestAccountFill(t *testing.T) {
	hosts := []*lab.Host{{Name: "region"}, {Name: "rack-1", Jump: "region"}, {Name: "node-1-1", Jump: "rack-1"}}
	acct := &accounting{readerPids: map[string]int{"region": 1, "rack-1": 1, "node-1-1": 2}, pidMax: 32768,
		tables: []*sshdTable{{}}}
	before := hostReading{pids: map[string]int{"region": 100, "rack-1": 200, "node-1-1": 32760},
		syns: map[string]uint64{"region": 5, "rack-1": 7, "node-1-1": 0}}
	after := hostReading{pids: map[string]int{"region": 110, "rack-1": 201, "node-1-1": 310},
		syns: map[string]uint64{"region": 8, "rack-1": 19, "node-1-1": 2}}
	var a account
	a.fill(acct, hosts, before, after)
	if want := map[string]int{"region": 9, "rack-1": 0, "node-1-1": 16}; !reflect.DeepEqual(a.pids, want) {
		t.Errorf("pids = %v, want %v", a.pids, want)
	}
	if want := map[string]int{"region": 3, "rack-1": 12, "node-1-1": 2}; !reflect.DeepEqual(a.sshd, want) {
		t.Errorf("sshd = %v, want %v", a.sshd, want)
	}
	if want := []string{"node-1-1"}; !reflect.DeepEqual(a.wrapped, want) {
		t.Errorf("wrapped = %v, want %v", a.wrapped, want)
	}
	if got := spread(hosts, "racks", a.pids); got != "0" {
		t.Errorf("spread of one rack = %q", got)
	}
	hosts = append(hosts, &lab.Host{Name: "node-1-2", Jump: "rack-1"})
	a.pids["node-1-2"] = 13
	if got := spread(hosts, "consumers", a.pids); got != "13-16 (14.5)" {
		t.Errorf("spread of consumers = %q", got)
	}
}
