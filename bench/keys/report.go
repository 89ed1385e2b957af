package main

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

func (b *bench) report(w io.Writer, hive, tars []sample) {
	s, o := b.s, b.o
	n := func(f func(keySpec) bool) int { return o.hosts * s.count(f) }
	fmt.Fprintf(w, "\nnix-hive keys benchmark: %d lab hosts x %d keys = %d key files, %d from a command of their own, the rest texts;\n",
		o.hosts, o.keys, o.hosts*o.keys, n(func(k keySpec) bool { return k.Argv != nil }))
	fmt.Fprintf(w, "%d post-activation, %d readable by nobody:nogroup (0440), %d in %s; %d hosts at once; median of %d runs\n\n",
		n(func(k keySpec) bool { return k.Post }), n(func(k keySpec) bool { return k.Readers }),
		n(func(k keySpec) bool { return strings.HasPrefix(k.Dest, svcDir+"/") }), svcDir, o.parallel, o.runs)
	hm, tm := median(hive), median(tars)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "side\tmedian s\truns s\tclient CPU s\tSSH conns\tsessions")
	fmt.Fprintf(tw, "nix-hive keys upload '*'\t%.2f\t%s\t%.2f\t%d\t%d\n", hive[hm].wall.Seconds(), walls(hive), hive[hm].cpu.Seconds(), hive[hm].conns, hive[hm].sessions)
	fmt.Fprintf(tw, "tar | ssh -F ssh-config HOST tar -x\t%.2f\t%s\t%.2f\t-\t-\n", tars[tm].wall.Seconds(), walls(tars), tars[tm].cpu.Seconds())
	tw.Flush()

	fmt.Fprintf(w, "\nper host, in each side's median run: s after the start when its first and its last key file landed (ctime), and the span\n\n")
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "host\tnix-hive first\tlast\tspan\ttar first\tlast\tspan\t")
	var hs, ts []time.Duration
	for _, h := range b.lab.Hosts {
		a, t := hive[hm].land[h.Name], tars[tm].land[h.Name]
		hs, ts = append(hs, a[1]-a[0]), append(ts, t[1]-t[0])
		fmt.Fprintf(tw, "%s\t%.2f\t%.2f\t%.2f\t%.2f\t%.2f\t%.2f\t\n", h.Name, a[0].Seconds(), a[1].Seconds(), (a[1] - a[0]).Seconds(),
			t[0].Seconds(), t[1].Seconds(), (t[1] - t[0]).Seconds())
	}
	tw.Flush()
	fmt.Fprintf(w, "span per host: nix-hive median %.2f s, max %.2f s; tar median %.2f s, max %.2f s\n\n",
		mid(hs).Seconds(), slices.Max(hs).Seconds(), mid(ts).Seconds(), slices.Max(ts).Seconds())

	h, t := hive[hm].wall, tars[tm].wall
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "goal\tvalue\ttarget\tmet")
	what := fmt.Sprintf("%d hosts × %d keys", o.hosts, o.keys)
	if o.hosts != 20 || o.keys != 200 {
		what += " (the goal is for 20 × 200)"
	}
	fmt.Fprintf(tw, "%s: < %.0f s\t%.2f s\t< %.0f s\t%s\n", what, goal.Seconds(), h.Seconds(), goal.Seconds(), met(h < goal))
	fmt.Fprintf(tw, "time(nix-hive) / time(tar over ssh)\t%.2f\t-\t-\n", h.Seconds()/t.Seconds())
	tw.Flush()
	fmt.Fprintf(w, "\nanchors, not measured here (%s):\n  %s\n", anchorFrom, anchors)
}

// median is the index of the sample with the median wall time.
func median(ss []sample) int {
	idx := make([]int, len(ss))
	for i := range idx {
		idx[i] = i
	}
	slices.SortFunc(idx, func(a, b int) int { return int(ss[a].wall - ss[b].wall) })
	return idx[len(idx)/2]
}

func mid(ds []time.Duration) time.Duration {
	ds = slices.Clone(ds)
	slices.Sort(ds)
	return ds[len(ds)/2]
}

func walls(ss []sample) string {
	var p []string
	for _, s := range ss {
		p = append(p, fmt.Sprintf("%.2f", s.wall.Seconds()))
	}
	return strings.Join(p, " ")
}

func met(ok bool) string {
	if ok {
		return "met"
	}
	return "MISSED"
}
