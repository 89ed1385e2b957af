package transport

import (
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"testing"
)

// Every value a ProxyCommand's %-tokens carry reaches its shell as one
// word, whatever it holds: the hive's rules keep hostile values out, and
// this is the second wall for one that got past them (an Effective made
// by hand, a user's HostName).
func TestProxyCommandTokensAreQuoted(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("HOME", dir)
	pwned := filepath.Join(dir, "pwned")
	hostile := "$(touch " + pwned + ")`touch " + pwned + "`;touch " + pwned + " 'x\" a"
	me, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		token string
		e     Effective
		want  string
	}{
		{"%h", Effective{Name: "a", HostName: hostile, User: "root", Port: 22}, hostile},
		{"%n", Effective{Name: hostile, User: "root", Port: 22}, hostile},
		{"%r", Effective{Name: "a", HostName: "h", User: hostile, Port: 22}, hostile},
		{"%p", Effective{Name: "a", HostName: "h", User: "root", Port: 2222}, "2222"},
		{"%d", Effective{Name: "a", HostName: "h", User: "root", Port: 22}, dir},
		{"%u", Effective{Name: "a", HostName: "h", User: "root", Port: 22}, me.Username},
		{"%%", Effective{Name: "a", HostName: "h", User: "root", Port: 22}, "%"},
	} {
		t.Run(tt.token, func(t *testing.T) {
			tt.e.ProxyCommand = "printf '[%s]' " + tt.token
			line := tt.e.ProxyCommandLine()
			out, err := exec.Command("/bin/sh", "-c", "exec "+line).Output()
			if err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			if string(out) != "["+tt.want+"]" {
				t.Errorf("%s expanded to %q; want the value as one word, %q", tt.token, out, "["+tt.want+"]")
			}
			if _, err := os.Stat(pwned); err == nil {
				t.Errorf("%s: the value ran as a command: %s", tt.token, line)
			}
		})
	}
	// A plain value is left as OpenSSH leaves it, so a ProxyCommand that
	// quotes %h itself still works.
	e := Effective{Name: "www-1", HostName: "10.0.0.5", User: "root", Port: 22, ProxyCommand: `nc "%h" %p`}
	if got := e.ProxyCommandLine(); got != `nc "10.0.0.5" 22` {
		t.Errorf("plain values changed: %s", got)
	}
}
