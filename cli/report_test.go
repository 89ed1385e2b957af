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
