package cli

import (
	"bytes"
	"fmt"
	"strings"
	"testing"

	"github.com/nix-hive/nix-hive/deploy"
)

// Above fullTableHosts, the summary lists only the hosts that need a look
// and counts the rest; -v lists every host.
func TestLargeSummaryGroupsOutcomes(t *testing.T) {
	r := &deploy.Report{Results: map[string]*deploy.Result{}}
	for i := range 60 {
		n := fmt.Sprintf("www-%d", i)
		st := deploy.StatusOK
		switch i {
		case 7, 9:
			st = deploy.StatusFailed
		case 11:
			st = deploy.StatusUnchanged
		}
		r.Order = append(r.Order, n)
		res := &deploy.Result{Instance: n, Status: st, Target: true, Wave: 1}
		if st == deploy.StatusFailed {
			res.Error = "activate: boom"
		}
		r.Results[n] = res
	}
	for _, verbose := range []bool{false, true} {
		var out, errOut bytes.Buffer
		g := &Globals{Verbose: verbose}
		g.stdout, g.stderr = &out, &errOut
		if err := g.finishReport(r); err == nil {
			t.Errorf("verbose=%v: failures did not fail", verbose)
		}
		lines := strings.Count(out.String(), "\n")
		if !verbose {
			if lines != 4 || !strings.Contains(out.String(), "www-7 ") || !strings.Contains(out.String(), "www-9 ") ||
				!strings.Contains(out.String(), "60 hosts: 57 ok, 2 failed, 1 unchanged") {
				t.Errorf("grouped summary:\n%s", out.String())
			}
		} else if lines != 61 {
			t.Errorf("-v: %d lines, want a header and 60 rows:\n%s", lines, out.String())
		}
	}
}

// A large fleet's log says what needs a look: failures, pushes from this
// machine, the rollout; -v says everything.
func TestLargeDeployLogIsBrief(t *testing.T) {
	events := []deploy.Event{
		{Instance: "region", Step: deploy.StepPush, Status: deploy.EventOK, Message: "1.2s"},
		{Instance: "www-1", Step: deploy.StepSubstitute, Status: deploy.EventOK},
		{Instance: "www-1", Step: deploy.StepActivate, Status: deploy.EventStart, Message: "switch"},
		{Instance: "www-1", Step: deploy.StepConfirm, Status: deploy.EventOK},
		{Instance: "www-7", Step: deploy.StepActivate, Status: deploy.EventFailed, Message: "boom"},
		{Step: deploy.StepRollout, Status: deploy.EventInfo, Message: "wave 2 of 3"},
	}
	for _, tt := range []struct {
		hosts   int
		verbose bool
		lines   int
	}{{60, false, 3}, {60, true, 6}, {50, false, 6}} {
		var out, errOut bytes.Buffer
		g := &Globals{Verbose: tt.verbose}
		g.stdout, g.stderr, g.stderrRaw = &out, &errOut, &errOut
		v := g.newDeployView(tt.hosts)
		for _, e := range events {
			v.Event(e)
		}
		if err := v.Close(); err != nil {
			t.Fatal(err)
		}
		if n := strings.Count(errOut.String(), "\n"); n != tt.lines {
			t.Errorf("%d hosts, -v %v: %d lines, want %d:\n%s", tt.hosts, tt.verbose, n, tt.lines, errOut.String())
		}
		if !strings.Contains(errOut.String(), "www-7 [") && !strings.Contains(errOut.String(), "www-7 activate failed") {
			t.Errorf("the failure is not logged:\n%s", errOut.String())
		}
	}
}
