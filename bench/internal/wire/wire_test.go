package wire

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

// The parsers read iproute2 6.1 and nftables 1.0.6 output (Debian 12);
// the samples are theirs, trimmed.

func TestParseRouteDev(t *testing.T) {
	for _, tc := range []struct {
		name, in, want string
		wantErr        bool
	}{
		{"veth", `[{"dst":"198.18.1.2","dev":"nhlab1r","prefsrc":"198.18.1.1","flags":[],"uid":0,"cache":[]}]`, "nhlab1r", false},
		{"loopback", `[{"type":"local","dst":"127.77.1.2","dev":"lo","prefsrc":"127.0.0.1"}]`, "lo", false},
		{"empty", `[]`, "", true},
		{"garbage", `RTNETLINK answers: Network is unreachable`, "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseRouteDev([]byte(tc.in))
			if (err != nil) != tc.wantErr || got != tc.want {
				t.Errorf("parseRouteDev = %q, %v; want %q, error %v", got, err, tc.want, tc.wantErr)
			}
		})
	}
}

func TestParseTxBytes(t *testing.T) {
	for _, tc := range []struct {
		name    string
		in      string
		want    uint64
		wantErr bool
	}{
		{"stats", `[{"ifindex":31,"ifname":"nhlab1r","stats64":{"rx":{"bytes":77495,"packets":310},"tx":{"bytes":71171,"packets":356}}}]`, 71171, false},
		// Beyond 2^53 a float64 decode would round; the counter must not.
		{"large", `[{"ifname":"x","stats64":{"tx":{"bytes":18446744073709551000}}}]`, 18446744073709551000, false},
		{"no stats", `[{"ifname":"x"}]`, 0, true},
		{"two links", `[{"stats64":{"tx":{"bytes":1}}},{"stats64":{"tx":{"bytes":2}}}]`, 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseTxBytes([]byte(tc.in))
			if (err != nil) != tc.wantErr || got != tc.want {
				t.Errorf("parseTxBytes = %d, %v; want %d, error %v", got, err, tc.want, tc.wantErr)
			}
		})
	}
}

func TestRootQdisc(t *testing.T) {
	for _, tc := range []struct{ name, in, want string }{
		{"fresh veth", `[{"kind":"noqueue","handle":"0:","root":true,"refcnt":2,"options":{}}]`, "noqueue"},
		{"shaped", `[{"kind":"htb","handle":"1:","root":true,"options":{"r2q":10,"default":"0x1"}},{"kind":"pfifo","handle":"8001:","parent":"1:1"}]`, "htb"},
		{"none", `[]`, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := rootQdisc([]byte(tc.in))
			if err != nil || got != tc.want {
				t.Errorf("rootQdisc = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

func TestParseCounters(t *testing.T) {
	in := `{"nftables": [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
	  {"counter": {"family": "inet", "name": "c1", "table": "t", "handle": 2, "packets": 3, "bytes": 180}},
	  {"counter": {"family": "inet", "name": "c2", "table": "t", "handle": 3, "packets": 0, "bytes": 0}}]}`
	got, err := parseCounters([]byte(in))
	want := map[string]Value{"c1": {Packets: 3, Bytes: 180}, "c2": {}}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("parseCounters = %v, %v; want %v", got, err, want)
	}
}

func TestMatches(t *testing.T) {
	for _, tc := range []struct {
		name string
		m    Match
		want string
	}{
		{"bytes v4", ToSSH(netip.MustParseAddr("198.18.3.2")), "ip daddr 198.18.3.2 tcp dport 22"},
		{"bytes v6", ToSSH(netip.MustParseAddr("::1")), "ip6 daddr ::1 tcp dport 22"},
		{"conns", NewSSHConns(netip.MustParseAddr("127.77.2.5")), "ip daddr 127.77.2.5 tcp dport 22 tcp flags & (syn | ack) == syn"},
		{"bytes back v4", FromSSH(netip.MustParseAddr("198.18.3.2")), "ip saddr 198.18.3.2 tcp sport 22"},
		{"conns arriving", ArrivingSSHConns(netip.MustParseAddr("127.77.2.5")), "ip daddr 127.77.2.5 tcp dport 22 tcp flags & (syn | ack) == syn"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.m.expr != tc.want {
				t.Errorf("got %q, want %q", tc.m.expr, tc.want)
			}
		})
	}
}

// Counters of both directions go to chains of their own hooks; a table
// of output counters alone has no input chain.
func TestTableScript(t *testing.T) {
	a := netip.MustParseAddr("198.18.3.2")
	got, err := tableScript("t", []Counter{{"up", ToSSH(a)}, {"down", FromSSH(a)}, {"syn", NewSSHConns(a)}})
	want := `add table inet t
delete table inet t
table inet t {
  counter up { }
  counter down { }
  counter syn { }
  chain output {
    type filter hook output priority 0; policy accept;
    ip daddr 198.18.3.2 tcp dport 22 counter name up
    ip daddr 198.18.3.2 tcp dport 22 tcp flags & (syn | ack) == syn counter name syn
  }
  chain input {
    type filter hook input priority 0; policy accept;
    ip saddr 198.18.3.2 tcp sport 22 counter name down
  }
}
`
	if err != nil || got != want {
		t.Errorf("tableScript = %v\n%s\nwant\n%s", err, got, want)
	}
	got, _ = tableScript("t", []Counter{{"up", ToSSH(a)}})
	if strings.Contains(got, "input") {
		t.Errorf("an input chain without input counters:\n%s", got)
	}
	for _, bad := range [][]Counter{{{"up", ToSSH(a)}, {"up", FromSSH(a)}}, {{"no-dash", ToSSH(a)}}} {
		if _, err := tableScript("t", bad); err == nil {
			t.Errorf("tableScript accepted %v", bad)
		}
	}
	if _, err := tableScript("bad name", nil); err == nil {
		t.Error("tableScript accepted a bad table name")
	}
}

func TestSub(t *testing.T) {
	before := map[string]Value{"a": {1, 100}, "b": {0, 0}}
	after := map[string]Value{"a": {4, 400}, "b": {2, 120}, "new": {1, 60}}
	want := map[string]Value{"a": {3, 300}, "b": {2, 120}, "new": {1, 60}}
	if got := Sub(after, before); !reflect.DeepEqual(got, want) {
		t.Errorf("Sub = %v, want %v", got, want)
	}
}

func TestShapeRejectsBadRates(t *testing.T) {
	// Rejected before any tc runs, so this needs neither root nor a device.
	for _, rate := range []string{"", "fast", "-1mbit", "100mbit; rm", "100 mbit", "--help"} {
		if _, err := Shape(t.Context(), "nonexistent0", rate); err == nil {
			t.Errorf("Shape accepted rate %q", rate)
		}
	}
}
