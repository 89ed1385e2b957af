package cli_test

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nix-hive/nix-hive/cli"
	"github.com/nix-hive/nix-hive/internal/nixtest"
	"github.com/nix-hive/nix-hive/internal/testenv"
	"github.com/nix-hive/nix-hive/lab"
	"github.com/nix-hive/nix-hive/lab/labtest"
	"github.com/nix-hive/nix-hive/nixcmd"
)

// hostileTokens is one attack per OpenSSH %-token that carries hive data
// into the user's own ProxyCommand: the host (%h), the instance name
// (%n) and the login (%r). Each payload is what a Terraform output could
// hold; each would run `id` on this machine if it reached a shell.
var hostileTokens = []struct {
	token, attr string
	// instance is the instance's attribute set in the hive, given the lab
	// host's address; name is its name.
	name     string
	instance func(addr string) string
	rule     string // the words of the refusal
}{
	{"%h", "host", "app-1", func(addr string) string { return fmt.Sprintf("host = %s;", nixcmd.String("$(id>pwned)"+addr)) },
		`instance "app-1": attribute host: "$(id>pwned)` /* the address follows */},
	{"%n", "name", "$(id>pwned)app", func(addr string) string { return fmt.Sprintf("host = %s;", nixcmd.String(addr)) },
		`instance "$(id>pwned)app": the name is not a valid instance name`},
	{"%r", "user", "app-1", func(addr string) string {
		return fmt.Sprintf("host = %s; user = %s;", nixcmd.String(addr), nixcmd.String("$(id>pwned)root"))
	}, `instance "app-1": attribute user: "$(id>pwned)root"`},
}

// A hive is untrusted input: values that would run a command on this
// machine through the user's ProxyCommand (%h, %n, %r) or through the
// OpenSSH config generated for nix copy are refused when the hive is
// read, naming the instance and the rule, before anything connects.
func testFaultHostileHiveValues(t *testing.T) {
	testenv.Tool(t, "nc", "apt-get install netcat-openbsd")
	l := labtest.New(t, lab.Config{Hosts: 1})
	h := l.Hosts[0]
	home := t.TempDir()
	t.Setenv("HOME", home)
	// Every payload writes "pwned" in the proxy's working directory.
	trap := t.TempDir()
	if err := os.Mkdir(filepath.Join(home, ".ssh"), 0o700); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(home, ".ssh", "config"), fmt.Sprintf(
		"Host *\n\tProxyCommand sh -c 'cd %s && touch used && exec /usr/bin/env NAME=%%n LOGIN=%%r nc %%h %%p'\n", trap))
	pwned := filepath.Join(trap, "pwned")
	attacks, ran := 0, 0
	hive := func(dir, name, attrs string) {
		writeFile(t, filepath.Join(dir, "hive.nix"), fmt.Sprintf(`{
  systems.t.toplevel = null;
  instances.%s = { system = "t"; port = %d; hostKey = %s; ssh.IdentityFile = %s; %s };
}`, nixcmd.String(name), h.Port, nixcmd.String(h.HostKey), nixcmd.String(l.ClientKey), attrs))
	}
	// The control: a plain hive reaches the host through the proxy.
	dir := t.TempDir()
	hive(dir, "app-1", fmt.Sprintf("host = %s;", nixcmd.String(h.Addr)))
	if code, out, _ := runIn(t, dir, "run", "*", "--", "hostname"); code != 0 || !strings.Contains(out, h.Name) {
		t.Fatalf("through the ProxyCommand: exit %d", code)
	}
	if _, err := os.Stat(filepath.Join(trap, "used")); err != nil {
		t.Fatalf("the ProxyCommand was not used: %v", err)
	}
	for _, tt := range hostileTokens {
		t.Run(tt.token, func(t *testing.T) {
			dir := t.TempDir()
			hive(dir, tt.name, tt.instance(h.Addr))
			for _, args := range [][]string{
				{"run", "*", "--", "true"},
				{"ssh", tt.name, "true"},
				{"deploy", "--no", "build"},
				{"ssh-config", "--write"},
			} {
				code, out, errOut := runIn(t, dir, args...)
				attacks++
				if _, err := os.Stat(pwned); err == nil {
					os.Remove(pwned)
					ran++
					t.Errorf("nix-hive %s with a hostile %s: a command from the hive ran on this machine (%s)", args[0], tt.attr, tt.token)
				}
				// 2, a mistake in the hive, for ssh too: nothing was
				// tried, so this is not one of ssh's own 255 failures.
				if code != 2 || !strings.Contains(errOut, "hive.nix: ") || !strings.Contains(errOut, tt.rule) {
					t.Errorf("nix-hive %s: exit %d (want 2), stderr does not refuse the %s naming the instance (%q):\n%s", args[0], code, tt.attr, tt.rule, errOut)
				}
				if args[0] == "ssh-config" && code == 0 {
					// What nix copy would read: OpenSSH expands %h from it.
					ssh := exec.Command("ssh", "-F", strings.TrimSpace(out), "-o", "BatchMode=yes", tt.name, "true")
					ssh.Dir = trap
					b, _ := ssh.CombinedOutput()
					if _, err := os.Stat(pwned); err == nil {
						os.Remove(pwned)
						ran++
						t.Errorf("ssh -F <generated config> with a hostile %s: a command from the hive ran (%s)\n%s", tt.attr, tt.token, b)
					}
				}
			}
		})
	}
	addFaultRow(faultRow{fault: "hostile host, name, login in the hive (%h %n %r)", exit: 2, outcome: "refused when read", hosts: "-",
		attacks: attacks, ranFromHive: ran})
}

// refusedOptions are ssh options a hive tried, or might: each must be
// refused by name (package endpoint keeps the allowlist).
var refusedOptions = []string{"SendEnv", "SetEnv", "ForwardAgent", "ForwardX11", "GlobalKnownHostsFile", "ControlPath",
	"ControlMaster", "ControlPersist", "ProxyCommand", "LocalCommand", "PermitLocalCommand", "RemoteCommand",
	"KnownHostsCommand", "Include", "Match", "PKCS11Provider", "IdentityAgent", "UpdateHostKeys", "VerifyHostKeyDNS",
	"StrictHostKeyChecking", "UserKnownHostsFile", "LocalForward", "DynamicForward", "Tunnel", "Frobnicate"}

// Every option outside the allowlist is refused by name when the hive is
// read, all of them in one round.
func testFaultSSHOptionsOutsideAllowlist(t *testing.T) {
	nixtest.Require(t)
	dir := t.TempDir()
	var b strings.Builder
	b.WriteString("{ systems.t.toplevel = null;\n")
	for i, o := range refusedOptions {
		fmt.Fprintf(&b, "  instances.a%d = { system = \"t\"; host = \"10.0.0.%d\"; ssh.%s = \"x\"; };\n", i, i+1, o)
	}
	b.WriteString("}\n")
	writeFile(t, filepath.Join(dir, "hive.nix"), b.String())
	code, _, errOut := runIn(t, dir, "plan", "--offline")
	accepted := 0
	for _, o := range refusedOptions {
		if !strings.Contains(errOut, "ssh option "+o+" is ") {
			accepted++
			t.Errorf("ssh option %s was not refused by name", o)
		}
	}
	if code != 2 {
		t.Errorf("plan with refused ssh options: exit %d, want 2", code)
	}
	addFaultRow(faultRow{fault: "ssh options outside the allowlist", exit: code, outcome: "refused when read", hosts: "-",
		badExit: code == 0, attacks: len(refusedOptions), accepted: accepted})
}

// runIn runs nix-hive on the hive in dir.
func runIn(t *testing.T, dir string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var o, e bytes.Buffer
	code = cli.Main("test", append([]string{"-c", dir}, args...), &o, &e)
	t.Logf("nix-hive %q: exit %d\n--- stdout\n%s--- stderr\n%s", args, code, o.String(), e.String())
	return code, o.String(), e.String()
}
