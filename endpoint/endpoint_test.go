package endpoint

import (
	"net/netip"
	"strings"
	"testing"
)

// payloads are what an attacker (or a careless Terraform output) puts in
// a hive: each must be refused as a name, host, user and tag.
var payloads = []string{
	"$(id>pwned)127.77.2.3", "$(id>pwned)", "`id`", "a;id", "a|id", "a&id", "a>b", "a<b",
	"-oProxyCommand=touch${IFS}x", "-l", "a b", "a\tb", "a\nb", "a\x00b", "'a'", `"a"`, `a\b`,
	"${IFS}", "$HOME", "a{b,c}", "a(b)", "*", "a?", "[a]", "!a", "#a", "~root", "a%h", "a%n", "",
	"127.77.2.3 -oProxyCommand=x", "host\r", "ünï", "a\u202eb", "..", ".a",
}

func TestPayloadsAreRefused(t *testing.T) {
	for _, p := range payloads {
		for what, check := range map[string]func(string) error{"name": CheckName, "host": CheckHost, "user": CheckUser, "tag": CheckTag} {
			if err := check(p); err == nil {
				t.Errorf("%s %q accepted", what, p)
			}
		}
	}
}

func TestRules(t *testing.T) {
	tests := []struct {
		check func(string) error
		ok    []string
		bad   []string
	}{
		{CheckName, []string{"www-1", "rack-1/app", "db_2", "a.b+c", "_x", "1"},
			[]string{"-x", ".x", "a:b", "a@b", "a,b", "a*", "a b", strings.Repeat("a", 254)}},
		{CheckHost, []string{"10.0.0.5", "127.77.2.3", "www.example.com", "www.example.com.", "host_1.internal", "localhost",
			"::1", "[2001:db8::1]", "fe80::1%eth0", "[fe80::1%eth0]", "xn--bcher-kva.example"},
			[]string{"10.0.0.256", "10.1.2", "010.0.0.1", "-x.example", "x-.example", "a..b", "[10.0.0.5]", "[::1", "::1]",
				"fe80::1%eth0;id", "2001:db8::1:", "www.example.com/x", strings.Repeat("a", 64) + ".example"}},
		{CheckUser, []string{"root", "deploy", "nix-ssh", "_svc", "a.b", "Admin"},
			[]string{"-root", "1root", ".x", "a b", "a@b", "a$", strings.Repeat("a", 33)}},
		{CheckTag, []string{"web", "canary", "env=prod", "team:web", "rack/b2"},
			[]string{"@web", "-x", "a b", "a,b", "a*"}},
	}
	for _, tt := range tests {
		for _, v := range tt.ok {
			if err := tt.check(v); err != nil {
				t.Errorf("%q refused: %v", v, err)
			}
		}
		for _, v := range tt.bad {
			if err := tt.check(v); err == nil {
				t.Errorf("%q accepted", v)
			}
		}
	}
	if got := HostName("[2001:db8::1]"); got != "2001:db8::1" {
		t.Errorf("HostName kept the brackets: %s", got)
	}
}

func TestOptions(t *testing.T) {
	for _, o := range Options {
		if err := CheckOption(o, "x"); err != nil {
			t.Errorf("%s refused: %v", o, err)
		}
	}
	for _, tt := range []struct{ key, want string }{
		{"SendEnv", "it sends something from this machine"},
		{"forwardagent", "ssh option ForwardAgent is refused: it sends something"},
		{"GlobalKnownHostsFile", "it decides which host keys are trusted"},
		{"ControlPath", "it shares connections"},
		{"ControlMaster", "it shares connections"},
		{"ProxyCommand", "it can make ssh run a command on this machine"},
		{"RemoteCommand", "it can make ssh run a command"},
		{"Frobnicate", "a hive may set only options that shape the connection"},
		{"ConectTimeout", "did you mean ConnectTimeout?"},
		{"Port", "derived from the instance; set port instead"},
		{"Bad Name", "not an OpenSSH option name"},
	} {
		err := CheckOption(tt.key, "x")
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: %v; want %q", tt.key, err, tt.want)
		}
	}
	if err := CheckOption("IdentityFile", "x\nHost *"); err == nil {
		t.Error("a newline in a value was accepted")
	}
}

// metachars are the bytes with a meaning to a POSIX shell or an OpenSSH
// config line; none may be in an accepted value (but for = and : in
// tags, which no shell expands).
const metachars = " \t\n\r\"'`$\\;&|<>(){}[]*?!#~,@"

// FuzzRules: whatever the rules accept is one plain word, never an
// option, and a host is an address or a DNS name.
func FuzzRules(f *testing.F) {
	for _, p := range payloads {
		f.Add(p)
	}
	for _, p := range []string{"www-1", "10.0.0.5", "[::1]", "root", "env=prod", "fe80::1%eth0"} {
		f.Add(p)
	}
	f.Fuzz(func(t *testing.T, s string) {
		for what, check := range map[string]func(string) error{"name": CheckName, "host": CheckHost, "user": CheckUser, "tag": CheckTag} {
			if check(s) != nil {
				continue
			}
			v := s
			if what == "host" {
				v = HostName(s)
			}
			if strings.HasPrefix(v, "-") || strings.ContainsAny(v, metachars) || strings.ContainsFunc(v, func(r rune) bool { return r < 0x21 || r > 0x7e }) {
				t.Errorf("%s %q accepted, but it holds a character with a meaning to a shell or OpenSSH", what, s)
			}
			if what != "tag" && strings.ContainsAny(v, "=") {
				t.Errorf("%s %q accepted with '='", what, s)
			}
			if what == "host" {
				if _, err := netip.ParseAddr(v); err != nil && strings.ContainsAny(v, ":%/+") {
					t.Errorf("host %q accepted: not an address, and not a DNS name", s)
				}
			}
		}
	})
}
