// Package wire shapes and counts the traffic a benchmark sends from this
// machine: tc on the deploy host's uplink, nftables counters, and link
// statistics.
package wire

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"regexp"
	"strings"
	"time"
)

// run runs an iproute2 or nftables tool and returns its stdout; errors carry
// stderr, which is where these tools explain themselves.
func run(ctx context.Context, stdin string, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(stderr.Bytes()))
	}
	return out, nil
}

// RouteDev returns the device the kernel sends packets for addr through.
func RouteDev(ctx context.Context, addr string) (string, error) {
	if _, err := netip.ParseAddr(addr); err != nil {
		return "", fmt.Errorf("route to %q: %w", addr, err)
	}
	out, err := run(ctx, "", "ip", "-j", "route", "get", addr)
	if err != nil {
		return "", err
	}
	return parseRouteDev(out)
}

func parseRouteDev(out []byte) (string, error) {
	var routes []struct {
		Dev string `json:"dev"`
	}
	if err := json.Unmarshal(out, &routes); err != nil {
		return "", fmt.Errorf("parse ip route get: %w", err)
	}
	if len(routes) == 0 || routes[0].Dev == "" {
		return "", fmt.Errorf("parse ip route get: no device in %s", bytes.TrimSpace(out))
	}
	return routes[0].Dev, nil
}

// LinkKind returns dev's kind as ip -d link shows it ("veth", ...; "" for
// devices without one, such as lo).
func LinkKind(ctx context.Context, dev string) (string, error) {
	out, err := run(ctx, "", "ip", "-j", "-d", "link", "show", "dev", dev)
	if err != nil {
		return "", err
	}
	var links []struct {
		LinkInfo struct {
			Kind string `json:"info_kind"`
		} `json:"linkinfo"`
	}
	if err := json.Unmarshal(out, &links); err != nil || len(links) != 1 {
		return "", fmt.Errorf("parse ip -d link show dev %s: %v: %s", dev, err, bytes.TrimSpace(out))
	}
	return links[0].LinkInfo.Kind, nil
}

// TxBytes returns how many bytes dev has sent since it was created.
func TxBytes(ctx context.Context, dev string) (uint64, error) {
	out, err := run(ctx, "", "ip", "-s", "-j", "link", "show", "dev", dev)
	if err != nil {
		return 0, err
	}
	return parseTxBytes(out)
}

func parseTxBytes(out []byte) (uint64, error) {
	var links []struct {
		Stats *struct {
			TX struct {
				Bytes uint64 `json:"bytes"`
			} `json:"tx"`
		} `json:"stats64"`
	}
	if err := json.Unmarshal(out, &links); err != nil {
		return 0, fmt.Errorf("parse ip -s link: %w", err)
	}
	if len(links) != 1 || links[0].Stats == nil {
		return 0, fmt.Errorf("parse ip -s link: no stats64 in %s", bytes.TrimSpace(out))
	}
	return links[0].Stats.TX.Bytes, nil
}

// rateRE is what tc accepts as a rate and this package passes on: a number
// and a unit, nothing an option parser could mistake for a flag.
var rateRE = regexp.MustCompile(`^[0-9]+(\.[0-9]+)?[kKmMgG]?(bit|bps)$`)

// Shape limits dev's egress to rate (tc syntax: "100mbit") with an htb
// qdisc, so everything this machine sends through dev queues behind one
// bottleneck, as on a slow uplink. remove deletes the qdisc; it uses its own
// short deadline because it runs while an interrupted benchmark unwinds.
func Shape(ctx context.Context, dev, rate string) (remove func() error, err error) {
	if !rateRE.MatchString(rate) {
		return nil, fmt.Errorf("shape %s: rate %q: want a tc rate such as 100mbit", dev, rate)
	}
	out, err := run(ctx, "", "tc", "-j", "qdisc", "show", "dev", dev, "root")
	if err != nil {
		return nil, err
	}
	if kind, err := rootQdisc(out); err != nil {
		return nil, fmt.Errorf("shape %s: %w", dev, err)
	} else if kind != "" && kind != "noqueue" {
		// Someone else's shaping: replacing it would break their measurement.
		return nil, fmt.Errorf("shape %s: it already has a %s root qdisc", dev, kind)
	}
	batch := fmt.Sprintf("qdisc add dev %s root handle 1: htb default 1\n"+
		"class add dev %s parent 1: classid 1:1 htb rate %s ceil %s\n", dev, dev, rate, rate)
	remove = func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := run(ctx, "", "tc", "qdisc", "del", "dev", dev, "root")
		return err
	}
	if _, err := run(ctx, batch, "tc", "-batch", "-"); err != nil {
		// Half a batch may have applied.
		remove()
		return nil, fmt.Errorf("shape %s to %s: %w", dev, rate, err)
	}
	return remove, nil
}

func rootQdisc(out []byte) (string, error) {
	var qs []struct {
		Kind string `json:"kind"`
		Root bool   `json:"root"`
	}
	if err := json.Unmarshal(out, &qs); err != nil {
		return "", fmt.Errorf("parse tc qdisc show: %w", err)
	}
	for _, q := range qs {
		if q.Root {
			return q.Kind, nil
		}
	}
	return "", nil
}

// Counter is a named nftables counter of the packets that match its rule:
// those leaving this machine's processes (the output hook), or, for a
// rule made by FromSSH, those arriving for them (the input hook).
type Counter struct {
	Name string
	Rule Match
}

// Match selects packets; build it with ToSSH, NewSSHConns or FromSSH.
type Match struct {
	expr  string
	input bool // in the input hook, not the output hook
}

// ToSSH matches every packet sent to addr's port 22, from any process.
func ToSSH(addr netip.Addr) Match {
	return Match{expr: fmt.Sprintf("%s daddr %s tcp dport 22", family(addr), addr)}
}

// FromSSH matches every packet addr's port 22 sends to this machine: the
// other direction of ToSSH's connections.
func FromSSH(addr netip.Addr) Match {
	return Match{expr: fmt.Sprintf("%s saddr %s tcp sport 22", family(addr), addr), input: true}
}

// NewSSHConns matches the first packet of each TCP connection to addr's
// port 22 (SYN without ACK), so its count is connections opened. It needs
// no connection tracking.
func NewSSHConns(addr netip.Addr) Match {
	return Match{expr: fmt.Sprintf("%s daddr %s tcp dport 22 tcp flags & (syn | ack) == syn", family(addr), addr)}
}

// ArrivingSSHConns is NewSSHConns in the input hook: in the network
// namespace where addr is local, it counts the connections addr's sshd
// is asked for, from this namespace's processes (over lo) and from
// anywhere else alike.
func ArrivingSSHConns(addr netip.Addr) Match {
	m := NewSSHConns(addr)
	m.input = true
	return m
}

func family(a netip.Addr) string {
	if a.Is4() {
		return "ip"
	}
	return "ip6"
}

// Value is what a counter has counted.
type Value struct{ Packets, Bytes uint64 }

// Table is an nftables table of counters that only counts, never drops.
type Table struct {
	name  string
	netns string // ip netns name; "" for this machine's own namespace
	names map[string]bool
}

var nameRE = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_]*$`)

// NewTable creates table name (family inet) with counters; an old table of
// that name (from a killed run) is replaced. Delete it when done.
func NewTable(ctx context.Context, name string, counters []Counter) (*Table, error) {
	return NewTableIn(ctx, "", name, counters)
}

// NewTableIn is NewTable in the network namespace netns (an `ip netns`
// name; "" for this machine's own). Its table goes with the namespace.
func NewTableIn(ctx context.Context, netns, name string, counters []Counter) (*Table, error) {
	script, err := tableScript(name, counters)
	if err != nil {
		return nil, err
	}
	t := &Table{name: name, netns: netns, names: map[string]bool{}}
	for _, c := range counters {
		t.names[c.Name] = true
	}
	if _, err := t.nft(ctx, script, "-f", "-"); err != nil {
		return nil, fmt.Errorf("create nft table %s: %w", name, err)
	}
	return t, nil
}

// tableScript is the nft -f input that creates table name with counters:
// an output chain, and an input chain if any counter needs one.
func tableScript(name string, counters []Counter) (string, error) {
	if !nameRE.MatchString(name) {
		return "", fmt.Errorf("nft table name %q: use letters, digits and _", name)
	}
	var b strings.Builder
	// "add" then "delete" is how nft -f replaces a table that may not exist.
	fmt.Fprintf(&b, "add table inet %s\ndelete table inet %s\ntable inet %s {\n", name, name, name)
	seen := map[string]bool{}
	input := false
	for _, c := range counters {
		if !nameRE.MatchString(c.Name) || seen[c.Name] {
			return "", fmt.Errorf("nft counter name %q: invalid or used twice", c.Name)
		}
		seen[c.Name] = true
		input = input || c.Rule.input
		fmt.Fprintf(&b, "  counter %s { }\n", c.Name)
	}
	for _, hook := range []string{"output", "input"} {
		if hook == "input" && !input {
			continue
		}
		fmt.Fprintf(&b, "  chain %s {\n    type filter hook %s priority 0; policy accept;\n", hook, hook)
		for _, c := range counters {
			if c.Rule.input == (hook == "input") {
				fmt.Fprintf(&b, "    %s counter name %s\n", c.Rule.expr, c.Name)
			}
		}
		b.WriteString("  }\n")
	}
	b.WriteString("}\n")
	return b.String(), nil
}

// nft runs nft in the table's namespace.
func (t *Table) nft(ctx context.Context, stdin string, args ...string) ([]byte, error) {
	if t.netns == "" {
		return run(ctx, stdin, "nft", args...)
	}
	return run(ctx, stdin, "ip", append([]string{"netns", "exec", t.netns, "nft"}, args...)...)
}

// Read returns every counter's value.
func (t *Table) Read(ctx context.Context) (map[string]Value, error) {
	out, err := t.nft(ctx, "", "-j", "list", "counters", "table", "inet", t.name)
	if err != nil {
		return nil, err
	}
	vals, err := parseCounters(out)
	if err != nil {
		return nil, fmt.Errorf("read nft table %s: %w", t.name, err)
	}
	for n := range t.names {
		if _, ok := vals[n]; !ok {
			return nil, fmt.Errorf("read nft table %s: counter %s missing", t.name, n)
		}
	}
	return vals, nil
}

func parseCounters(out []byte) (map[string]Value, error) {
	var doc struct {
		Nftables []struct {
			Counter *struct {
				Name    string `json:"name"`
				Packets uint64 `json:"packets"`
				Bytes   uint64 `json:"bytes"`
			} `json:"counter"`
		} `json:"nftables"`
	}
	if err := json.Unmarshal(out, &doc); err != nil {
		return nil, fmt.Errorf("parse nft -j output: %w", err)
	}
	vals := map[string]Value{}
	for _, o := range doc.Nftables {
		if o.Counter != nil {
			vals[o.Counter.Name] = Value{Packets: o.Counter.Packets, Bytes: o.Counter.Bytes}
		}
	}
	return vals, nil
}

// Delete removes the table. Like Shape's remove it runs while a benchmark
// unwinds, so it does not take the (maybe cancelled) caller's context. Its
// bound is generous: it may run while 1,000 hosts' sshd sessions end at
// once (a holder just stopped), and nft then waited over 10 s for a core.
func (t *Table) Delete() error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err := t.nft(ctx, "", "delete", "table", "inet", t.name)
	if err != nil && strings.Contains(err.Error(), "No such file") {
		return nil
	}
	return err
}

// Sub returns after minus before, counter by counter.
func Sub(after, before map[string]Value) map[string]Value {
	d := make(map[string]Value, len(after))
	for n, a := range after {
		b := before[n]
		d[n] = Value{Packets: a.Packets - b.Packets, Bytes: a.Bytes - b.Bytes}
	}
	return d
}

// ErrNotVeth is returned by Uplink when the route to an address does not
// leave through a veth device.
var ErrNotVeth = errors.New("not a veth device")

// Uplink returns the root-namespace end of the veth pair through which this
// machine reaches addr: the lab's jump host sits at the other end.
func Uplink(ctx context.Context, addr string) (string, error) {
	dev, err := RouteDev(ctx, addr)
	if err != nil {
		return "", err
	}
	kind, err := LinkKind(ctx, dev)
	if err != nil {
		return "", err
	}
	if kind != "veth" {
		return "", fmt.Errorf("route to %s leaves through %s (kind %q): %w", addr, dev, kind, ErrNotVeth)
	}
	return dev, nil
}
