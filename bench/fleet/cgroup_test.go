package main

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestCgroupOf(t *testing.T) {
	const v1 = "12:pids:/\n5:cpu,cpuacct:/user.slice\n1:name=systemd:/init.scope\n0::/init.scope\n"
	for _, c := range []struct {
		name, text string
		v1         bool
		want       string
		ok         bool
	}{
		{"v1 cpuacct shared with cpu", v1, true, "/user.slice", true},
		{"v1 text, the unified line", v1, false, "/init.scope", true},
		{"v1 cpuacct alone", "4:cpuacct:/\n", true, "/", true},
		{"a name that only contains cpuacct", "4:cpuacctx:/a\n", true, "", false},
		{"v2 only", "0::/system.slice/ssh.service\n", false, "/system.slice/ssh.service", true},
		{"v2 only, asked for v1", "0::/a\n", true, "", false},
		{"empty", "", false, "", false},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, ok := cgroupOf(c.text, c.v1)
			if got != c.want || ok != c.ok {
				t.Errorf("cgroupOf(%q, %v) = %q, %v; want %q, %v", c.text, c.v1, got, ok, c.want, c.ok)
			}
		})
	}
}

func TestScriptGoals(t *testing.T) {
	ms := func(n int) time.Duration { return time.Duration(n) * time.Millisecond }
	rows := []*row{
		{what: "script, all", hosts: 10, script: true, wall: ms(6000), cpu: 12, sideCPU: ms(500), sideKnown: true},
		{what: allWhat, hosts: 10, wall: ms(7500), cpu: 15, sideCPU: ms(300), sideKnown: true},
		{what: "nix-hive deploy, a tenth", hosts: 2, wall: ms(1000)},
		{what: "script, a tenth", hosts: 2, script: true, wall: ms(1200), err: errors.New("cut off")},
	}
	gs := scriptGoals(rows)
	if len(gs) != 2 {
		t.Fatalf("%d goals, want the time and the deploy host's CPU of all (a tenth's script failed): %+v", len(gs), gs)
	}
	if g := gs[0]; g.ok || !g.known || !strings.HasPrefix(g.value, "1.25 (750 / 600 ms; the whole machine's CPU 1500 / 1200 ms") {
		t.Errorf("time: %+v", g)
	}
	if g := gs[1]; !g.info || g.verdict() != "-" || !strings.HasPrefix(g.value, "0.60 (30.0 / 50.0 ms)") {
		t.Errorf("deploy host CPU: %+v", g)
	}
}
