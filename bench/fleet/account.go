package main

// Per-host accounting (issue 28): what a deploy, a no-op and a rollback
// cost each host in SSH connections, sessions, sftp requests, processes
// and bytes.

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"

	"github.com/nix-hive/nix-hive/bench/internal/wire"
	"github.com/nix-hive/nix-hive/lab"
)

// Rows accounted per host.
const (
	allWhat      = "nix-hive deploy, all"
	noopWhat     = "no-op redeploy"
	againWhat    = "nix-hive deploy, all, again (for the rollback)"
	rollbackWhat = "rollback '*'"
)

// accounted says which rows get the per-host accounting: it reads every
// host before and after (outside the timed window), which costs this
// machine a process per host each time.
func accounted(what string) bool {
	return what == allWhat || what == againWhat || what == noopWhat || what == muxNoopWhat || what == rollbackWhat
}

// account is what an accounted row cost each host.
type account struct {
	ssh sshLine // nix-hive's own counts (its -v line)
	// pids are the pids each host's pid namespace allocated during the
	// command (processes and threads alike), the reader's own taken off.
	pids map[string]int
	// sshd are the TCP connections each host's sshd was asked for, from
	// any client (this machine's, another host's), nil if not counted.
	sshd    map[string]int
	wrapped []string // hosts whose pid counter wrapped: their count is approximate
}

// hostReading is one reading of every host.
type hostReading struct {
	pids map[string]int    // ns_last_pid of each host's pid namespace
	syns map[string]uint64 // SYNs to each host's port 22 in its network namespace
}

// accounting is what the per-host readings need, found at setup.
type accounting struct {
	readerPids map[string]int // pids one reading of a host allocates there
	pidMax     int
	tables     []*sshdTable // nil when sshd's connections are not counted
	note       string       // why not, if so
}

// sshdTable counts connections to the sshd of every host of one network
// namespace: a rack's namespace holds the rack and its consumers.
type sshdTable struct {
	t     *wire.Table
	hosts map[string]string // counter -> host
}

// lastPid is the last pid host h's pid namespace allocated, read inside
// it (ns_last_pid answers for the reader's own namespace): the reader,
// nsenter's child that execs cat, is a pid of its own there.
func lastPid(ctx context.Context, h *lab.Host) (int, error) {
	out, err := h.Exec(ctx, "cat", "/proc/sys/kernel/ns_last_pid")
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(out)))
}

// setupAccounting measures what reading a host's last pid costs there
// (three reads back to back: the smaller difference), and puts a counter
// of SYNs to port 22 for every host into the network namespace it lives
// in.
func (b *bench) setupAccounting(ctx context.Context) error {
	a := &accounting{readerPids: map[string]int{}}
	v, err := os.ReadFile("/proc/sys/kernel/pid_max")
	if err != nil {
		return err
	}
	if a.pidMax, err = strconv.Atoi(strings.TrimSpace(string(v))); err != nil {
		return fmt.Errorf("pid_max: %w", err)
	}
	var mu sync.Mutex
	netOf := map[string]string{} // host -> "net:[inode]"
	err = eachHost(ctx, b.lab.Hosts, func(ctx context.Context, h *lab.Host) error {
		var r [3]int
		for i := range r {
			var err error
			if r[i], err = lastPid(ctx, h); err != nil {
				return err
			}
		}
		ns, err := h.Exec(ctx, "readlink", "/proc/self/ns/net")
		if err != nil {
			return err
		}
		mu.Lock()
		defer mu.Unlock()
		a.readerPids[h.Name] = min(r[1]-r[0], r[2]-r[1])
		netOf[h.Name] = strings.TrimSpace(string(ns))
		return nil
	})
	if err != nil {
		return fmt.Errorf("read the hosts' last pids: %w", err)
	}
	if a.tables, err = sshdTables(ctx, b.lab.Hosts, netOf); err != nil {
		a.note = err.Error()
		a.tables = nil
	}
	b.acct = a
	costs := map[int]int{}
	for _, c := range a.readerPids {
		costs[c]++
	}
	var desc []string
	for c, n := range costs {
		desc = append(desc, fmt.Sprintf("%d pid(s) on %d hosts", c, n))
	}
	slices.Sort(desc)
	msg := "reading a host's ns_last_pid takes " + strings.Join(desc, ", ")
	if a.tables == nil {
		msg += "; sshd connections per host not counted: " + a.note
	}
	b.step(msg)
	return nil
}

// sshdTables makes one counter table per network namespace of the lab's
// hosts (named in /run/netns), counting SYNs to each host's port 22 in
// the input hook: connections from this machine, tunnelled from a jump
// host's sshd, and from other hosts' ssh (a consumer substituting from
// its store) alike.
func sshdTables(ctx context.Context, hosts []*lab.Host, netOf map[string]string) ([]*sshdTable, error) {
	ents, err := os.ReadDir("/run/netns")
	if err != nil {
		return nil, err
	}
	byIno := map[string]string{} // "net:[inode]" -> ip netns name
	for _, e := range ents {
		fi, err := os.Stat(filepath.Join("/run/netns", e.Name()))
		if err != nil {
			continue
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			byIno[fmt.Sprintf("net:[%d]", st.Ino)] = e.Name()
		}
	}
	counters := map[string][]wire.Counter{}
	names := map[string]map[string]string{}
	var order []string
	for i, h := range hosts {
		ns := byIno[netOf[h.Name]]
		if ns == "" {
			return nil, fmt.Errorf("host %s's network namespace (%s) is not in /run/netns", h.Name, netOf[h.Name])
		}
		addr, err := netip.ParseAddr(h.Addr)
		if err != nil {
			return nil, fmt.Errorf("host %s: %w", h.Name, err)
		}
		if names[ns] == nil {
			names[ns] = map[string]string{}
			order = append(order, ns)
		}
		c := fmt.Sprintf("h%d", i)
		counters[ns] = append(counters[ns], wire.Counter{Name: c, Rule: wire.ArrivingSSHConns(addr)})
		names[ns][c] = h.Name
	}
	var tables []*sshdTable
	for _, ns := range order {
		// The table goes with the namespace when the lab closes.
		t, err := wire.NewTableIn(ctx, ns, fmt.Sprintf("nix_hive_bench_fleet_sshd_%d", os.Getpid()), counters[ns])
		if err != nil {
			return nil, err
		}
		tables = append(tables, &sshdTable{t: t, hosts: names[ns]})
	}
	return tables, nil
}

// readHosts reads every host's last pid and the sshd counters.
func (b *bench) readHosts(ctx context.Context) (hostReading, error) {
	hr := hostReading{pids: map[string]int{}, syns: map[string]uint64{}}
	var mu sync.Mutex
	err := eachHost(ctx, b.lab.Hosts, func(ctx context.Context, h *lab.Host) error {
		p, err := lastPid(ctx, h)
		mu.Lock()
		hr.pids[h.Name] = p
		mu.Unlock()
		return err
	})
	if err != nil {
		return hr, err
	}
	for _, t := range b.acct.tables {
		vals, err := t.t.Read(ctx)
		if err != nil {
			return hr, err
		}
		for c, h := range t.hosts {
			hr.syns[h] = vals[c].Packets
		}
	}
	return hr, nil
}

// fill sets the per-host counts from two readings.
func (a *account) fill(acct *accounting, hosts []*lab.Host, before, after hostReading) {
	a.pids = map[string]int{}
	if acct.tables != nil {
		a.sshd = map[string]int{}
	}
	for _, h := range hosts {
		d := after.pids[h.Name] - before.pids[h.Name]
		if d < 0 {
			// The namespace's pids wrapped: past pid_max, allocation
			// starts again above 300.
			d += acct.pidMax - 300
			a.wrapped = append(a.wrapped, h.Name)
		}
		a.pids[h.Name] = d - acct.readerPids[h.Name]
		if a.sshd != nil {
			a.sshd[h.Name] = int(after.syns[h.Name] - before.syns[h.Name])
		}
	}
}

// sshLine is what nix-hive -v says a command cost: its line
// "ssh: N connections (...), S sessions (E exec, F sftp), R sftp
// requests, at most M connections to one host", or through a holder
// "ssh: through mux pid P: N new connections, S sessions, ...".
type sshLine struct {
	conns, sessions int
	// split: the line has the rest (nix-hive from issue 28 on).
	split                    bool
	exec, sftp, sftpRequests int
	maxConns                 int // at most to one host; 0 through a holder
	keepalives               int // probes sent (-1: the line does not say)
	holderSFTPRequests       int // through a holder: the holder's sftp requests for the command
}

var (
	sshCountsRE = regexp.MustCompile(`ssh: (\d+) connections \(\d+ direct, \d+ through [^)]*\), (\d+) sessions` +
		`(?: \((\d+) exec, (\d+) sftp\), (\d+) sftp requests, at most (\d+) connections to one host(?:, (\d+) keepalives)?)?`)
	muxCountsRE = regexp.MustCompile(`ssh: through mux pid \d+: (\d+) new connections, (\d+) sessions` +
		`(?:, \d+ hosts' state read \(sessions: (\d+) exec, (\d+) sftp; sftp requests: (\d+) of this command's, (\d+) of the holder's\))?`)
)

// sshCounts reads the last "ssh: N connections (...), M sessions" line
// nix-hive -v printed into a log. The line is matched anywhere, not only
// at the start of a line: the log takes stdout and stderr as they come,
// so the line (one write to stderr) can land inside a table row that
// stdout was writing in pieces.
func sshCounts(log string) (sshLine, error) {
	b, err := os.ReadFile(log)
	if err != nil {
		return sshLine{}, err
	}
	m := sshCountsRE.FindAllSubmatch(b, -1)
	if m == nil {
		return sshLine{}, fmt.Errorf("%s: nix-hive -v printed no count of SSH connections", log)
	}
	last := m[len(m)-1]
	l := sshLine{conns: atoi(last[1]), sessions: atoi(last[2]), split: last[3] != nil, keepalives: -1}
	if l.split {
		l.exec, l.sftp, l.sftpRequests, l.maxConns = atoi(last[3]), atoi(last[4]), atoi(last[5]), atoi(last[6])
	}
	if last[7] != nil {
		l.keepalives = atoi(last[7])
	}
	return l, nil
}

// muxCounts reads nix-hive -v's count of a command through the holder:
// the connections the holder made for it, the sessions it opened.
func muxCounts(log string) (sshLine, error) {
	b, err := os.ReadFile(log)
	if err != nil {
		return sshLine{}, err
	}
	m := muxCountsRE.FindSubmatch(b)
	if m == nil {
		return sshLine{}, fmt.Errorf("%s: the command did not go through the holder", log)
	}
	l := sshLine{conns: atoi(m[1]), sessions: atoi(m[2]), split: m[3] != nil, keepalives: -1}
	if l.split {
		l.exec, l.sftp, l.sftpRequests, l.holderSFTPRequests = atoi(m[3]), atoi(m[4]), atoi(m[5]), atoi(m[6])
	}
	return l, nil
}

func atoi(b []byte) int {
	n, _ := strconv.Atoi(string(b))
	return n
}

// role is a host's place in the tree.
func role(h *lab.Host) string {
	switch {
	case h.Name == regionName:
		return "region"
	case h.Jump == regionName:
		return "racks"
	}
	return "consumers"
}

var roles = []string{"region", "racks", "consumers"}

// spread is "min-max (mean)" of the values of hosts of one role, or one
// number for one host.
func spread(hosts []*lab.Host, r string, v map[string]int) string {
	var vals []int
	for _, h := range hosts {
		if role(h) == r {
			vals = append(vals, v[h.Name])
		}
	}
	if len(vals) == 0 {
		return "-"
	}
	lo, hi, sum := slices.Min(vals), slices.Max(vals), 0
	for _, x := range vals {
		sum += x
	}
	if lo == hi {
		return fmt.Sprint(lo)
	}
	return fmt.Sprintf("%d-%d (%.1f)", lo, hi, float64(sum)/float64(len(vals)))
}

func mean(v map[string]int) float64 {
	if len(v) == 0 {
		return 0
	}
	sum := 0
	for _, x := range v {
		sum += x
	}
	return float64(sum) / float64(len(v))
}

// reportAccount prints the per-host table of the accounted rows and its
// breakdown by role.
func (b *bench) reportAccount(w io.Writer, rows []*row) {
	var acc []*row
	for _, r := range rows {
		if r.acct != nil && r.err == nil {
			acc = append(acc, r)
		}
	}
	if len(acc) == 0 {
		return
	}
	fmt.Fprintf(w, "\nper host (issue 28): SSH handshakes = nix-hive's own connections (its -v; through mux, the holder's new ones); nix copy's\n")
	fmt.Fprintf(w, "pushes ride them (its ssh is nix-hive's relay; TCP above counts any other); exec and sftp sessions and sftp requests (packets sent) from its -v,\n")
	fmt.Fprintf(w, "through mux with the holder's sftp requests; processes = pids the host's pid namespace allocated (processes and threads,\n")
	fmt.Fprintf(w, "ns_last_pid before and after, less the reader's own); KiB up = (bytes to the region - closure) / hosts, KiB down = bytes\n")
	fmt.Fprintf(w, "from the region / hosts (nft, IP packets; pkts: their number); sshd conns = connections each host's sshd was asked for by any\n")
	fmt.Fprintf(w, "client (SYNs); keepalives = the keepalive@openssh.com probes nix-hive sent (its -v), a packet each way and an ACK\n\n")
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "command\thosts\tSSH handshakes/host\texec sessions/host\tsftp sessions/host\tsftp requests/host\tprocesses/host\tKiB up/host\tKiB down/host\tpkts up/host\tpkts down/host\tsshd conns/host\tkeepalives/host\t")
	per := func(n int, r *row) string { return fmt.Sprintf("%.2f", float64(n)/float64(r.hosts)) }
	for _, r := range acc {
		a := r.acct
		exec, sftp, reqs := "-", "-", "-"
		if a.ssh.split {
			exec, sftp, reqs = per(a.ssh.exec, r), per(a.ssh.sftp, r), per(a.ssh.sftpRequests+a.ssh.holderSFTPRequests, r)
		}
		sshd := "-"
		if a.sshd != nil {
			sshd = fmt.Sprintf("%.2f", mean(a.sshd))
		}
		kas := "-"
		if a.ssh.keepalives >= 0 {
			kas = per(a.ssh.keepalives, r)
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%.1f\t%.1f\t%.1f\t%.0f\t%.0f\t%s\t%s\t\n", r.what, r.hosts, per(a.ssh.conns, r), exec, sftp, reqs,
			mean(a.pids), r.controlKiB(), r.downKiB(), float64(r.packets[0])/float64(r.hosts), float64(r.packets[1])/float64(r.hosts), sshd, kas)
	}
	tw.Flush()
	fmt.Fprintf(w, "\nby role: min-max (mean) per host\n")
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  command\trole\thosts\tprocesses\tsshd conns")
	for _, r := range acc {
		for _, ro := range roles {
			n := 0
			for _, h := range b.lab.Hosts {
				if role(h) == ro {
					n++
				}
			}
			sshd := "-"
			if r.acct.sshd != nil {
				sshd = spread(b.lab.Hosts, ro, r.acct.sshd)
			}
			fmt.Fprintf(tw, "  %s\t%s\t%d\t%s\t%s\n", r.what, ro, n, spread(b.lab.Hosts, ro, r.acct.pids), sshd)
		}
	}
	tw.Flush()
	for _, r := range acc {
		if len(r.acct.wrapped) > 0 {
			fmt.Fprintf(w, "  %s: the pid counter wrapped on %s (counted as if every pid below pid_max was free)\n", r.what, strings.Join(r.acct.wrapped, ", "))
		}
	}
}

// accountGoals are issue 28's goals, each with the measured value.
func accountGoals(rows []*row) []goal {
	find := func(what string) *row {
		for _, r := range rows {
			if r.what == what && r.err == nil && r.acct != nil {
				return r
			}
		}
		return nil
	}
	all, again, noop, muxNoop := find(allWhat), find(againWhat), find(noopWhat), find(muxNoopWhat)
	var gs []goal
	// The first deploy to a host brings nix-hive's agent there (once per
	// host and release: substituted from its store, sent from here to a
	// store); a fleet deployed before pays what "again" does.
	for _, d := range []struct {
		what string
		r    *row
	}{{"control traffic per host (a first deploy: the agent brought)", all}, {"control traffic per host (a deploy to hosts deployed before)", again}} {
		g := goal{what: d.what, target: "<= 8 KiB"}
		if d.r != nil {
			up := d.r.controlKiB()
			g.known, g.ok = true, up <= 8
			g.value = fmt.Sprintf("%.1f KiB up (and %.1f KiB down)", up, d.r.downKiB())
		}
		gs = append(gs, g)
	}
	gs = append(gs, handshakeGoal("SSH handshakes per host in a deploy", all, 2))
	gs = append(gs, handshakeGoal("SSH handshakes per host in a deploy to hosts deployed before", again, 2))
	gs = append(gs, handshakeGoal("SSH handshakes per host in a no-op", noop, 1))
	g := goal{what: "SSH handshakes per host in a no-op through the holder", target: "0"}
	if muxNoop != nil {
		g.known, g.ok = true, muxNoop.acct.ssh.conns == 0
		g.value = fmt.Sprintf("%d new connections for %d hosts", muxNoop.acct.ssh.conns, muxNoop.hosts)
	}
	gs = append(gs, g)
	return append(gs, scriptGoals(rows)...)
}

// scriptGoals set nix-hive's deploys beside the hand-written script's in
// the same run: time per host, the goal, and, as a measurement beside
// it, the deploy host's own CPU per host, which on a real fleet (each
// host with CPUs of its own) is what the deploy host shares among them.
func scriptGoals(rows []*row) []goal {
	var gs []goal
	for _, p := range []struct{ what, nixHive, script string }{
		{"a tenth", "nix-hive deploy, a tenth", "script, a tenth"},
		{"all", allWhat, "script, all"},
	} {
		n, s := rowNamed(rows, p.nixHive), rowNamed(rows, p.script)
		if n == nil || s == nil || n.err != nil || s.err != nil {
			continue
		}
		ratio := n.msPerHost() / s.msPerHost()
		gs = append(gs, goal{what: "deploy time per host, " + p.what + " (" + fmt.Sprint(n.hosts) + " hosts), nix-hive / script",
			target: "<= 1.0", known: true, ok: ratio <= 1.0,
			value: fmt.Sprintf("%.2f (%.0f / %.0f ms; the whole machine's CPU %.0f / %.0f ms per host)", ratio,
				n.msPerHost(), s.msPerHost(), 1000*n.cpu/float64(n.hosts), 1000*s.cpu/float64(s.hosts))})
		if n.sideKnown && s.sideKnown && s.sideCPU > 0 {
			gs = append(gs, goal{what: "the deploy host's CPU per host, " + p.what + ", nix-hive / script", target: "-", info: true,
				value: fmt.Sprintf("%.2f (%.1f / %.1f ms)", n.sideMsPerHost()/s.sideMsPerHost(), n.sideMsPerHost(), s.sideMsPerHost())})
		}
	}
	return gs
}

// handshakeGoal judges the handshakes this machine asked of the host
// that got the most: nix-hive's (at most M to one host, from its -v) and
// nix copy's to the region, which the TCP count of the row includes
// (every TCP connection of this machine's goes to the region).
func handshakeGoal(what string, r *row, limit int) goal {
	g := goal{what: what, target: fmt.Sprintf("<= %d", limit)}
	if r == nil || !r.acct.ssh.split {
		return g
	}
	worst := max(r.acct.ssh.maxConns, r.tcpConns)
	g.known, g.ok = true, worst <= limit
	g.value = fmt.Sprintf("nix-hive %.2f per host, at most %d to one host; the region %d (this machine's TCP connections to it, nix copy's included)",
		float64(r.acct.ssh.conns)/float64(r.hosts), r.acct.ssh.maxConns, r.tcpConns)
	if r.acct.sshd != nil {
		g.value += fmt.Sprintf("; from any client, the busiest sshd %d", maxOf(r.acct.sshd))
	}
	return g
}

func maxOf(v map[string]int) int {
	n := 0
	for _, x := range v {
		n = max(n, x)
	}
	return n
}
