package eval

import (
	"context"
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nix-hive/nix-hive/internal/nixtest"
)

// genHive writes a hive with n instances over 5 systems whose toplevels
// throw when evaluated: the inventory must never touch them.
func genHive(t testing.TB, n int) Source {
	var b strings.Builder
	b.WriteString("{\n  systems = {\n")
	for s := 0; s < 5; s++ {
		fmt.Fprintf(&b, "    sys%d.toplevel = throw \"toplevel sys%d evaluated for the inventory\";\n", s, s)
	}
	b.WriteString("  };\n  instances = {\n")
	for i := 0; i < n; i++ {
		fmt.Fprintf(&b, "    host-%d = { system = \"sys%d\"; host = \"10.%d.%d.%d\"; jump = %s; store = %s; tags = [ \"rack-%d\" \"web\" ]; hostKey = \"ssh-ed25519 AAAAkey%d\"; };\n",
			i, i%5, i/65536, (i/256)%256, i%256, ref(i, 50), ref(i, 10), i%40, i)
	}
	b.WriteString("  };\n}\n")
	return writeHive(t, b.String(), "")
}

// ref points one instance in every `every` at the first of its group, as a
// jump host or store would be.
func ref(i, every int) string {
	if i%every == 0 {
		return "null"
	}
	return fmt.Sprintf("\"host-%d\"", i-i%every)
}

type evalCost struct {
	wall    time.Duration
	peakRSS int64 // bytes, of the nix process
}

func measureInventory(b *testing.B, src Source, want int) evalCost {
	ev := newEvaluator(b, src, nil)
	var cost evalCost
	ev.Nix.Observe = func(_ []string, ps *os.ProcessState) {
		if ru, ok := ps.SysUsage().(*syscall.Rusage); ok {
			cost.peakRSS = ru.Maxrss * 1024
		}
	}
	start := time.Now()
	inv, err := ev.Inventory(context.Background())
	cost.wall = time.Since(start)
	if err != nil {
		b.Fatal(err)
	}
	if len(inv.Instances) != want {
		b.Fatalf("instances = %d, want %d", len(inv.Instances), want)
	}
	return cost
}

// BenchmarkInventory evaluates the inventory of a 2,000-instance hive and,
// in the same run, of a 20-instance one, and reports both and their ratio.
// Goal: 2,000 instances under 3 s and 500 MB, growing about linearly.
//
//	go test ./eval -run '^$' -bench Inventory -benchtime 3x
func BenchmarkInventory(b *testing.B) {
	nixtest.Require(b)
	small, large := genHive(b, 20), genHive(b, 2000)
	var s, l evalCost
	for i := 0; i < b.N; i++ {
		s = measureInventory(b, small, 20)
		l = measureInventory(b, large, 2000)
	}
	b.ReportMetric(l.wall.Seconds(), "s/2000-instances")
	b.ReportMetric(float64(l.peakRSS)/(1<<20), "MB-peak/2000-instances")
	b.ReportMetric(s.wall.Seconds(), "s/20-instances")
	b.ReportMetric(l.wall.Seconds()/s.wall.Seconds(), "time-ratio-2000/20")
	b.ReportMetric(float64(l.peakRSS)/float64(s.peakRSS), "mem-ratio-2000/20")
	b.Logf("20 instances: %.3fs, %d MB peak; 2000 instances: %.3fs, %d MB peak; ratios %.1fx time, %.1fx memory (100x instances)",
		s.wall.Seconds(), s.peakRSS>>20, l.wall.Seconds(), l.peakRSS>>20, l.wall.Seconds()/s.wall.Seconds(), float64(l.peakRSS)/float64(s.peakRSS))
}
