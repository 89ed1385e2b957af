package cli_test

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nix-hive/nix-hive/cli"
	"github.com/nix-hive/nix-hive/internal/nixtest"
)

// hiveErrorCases are mistakes a user can make in a hive, each with what
// its message must say. Their messages are collected in
// testdata/hive_errors.golden, to be read together: each is one sentence
// naming the file, the place and the attribute, with a hint.
var hiveErrorCases = []struct {
	name string
	hive string // {TS} is replaced by the test systems' directory
	args []string
	want []string
}{
	{"top-level typo", `{ sytems.www.toplevel = null; instances = { }; }`, []string{"plan"},
		[]string{"hive.nix: hive: unknown attribute sytems; did you mean systems?"}},
	{"top-level typo instance", `{ systems.www.toplevel = null; instance.a.system = "www"; }`, []string{"plan"},
		[]string{"hive: unknown attribute instance; did you mean instances?"}},
	{"signing typo", `{ signing.keyfile = "k"; systems.www.toplevel = null; }`, []string{"plan"},
		[]string{"signing: unknown attribute keyfile; did you mean keyFile?"}},
	{"nix.build typo", `{ nix.build.flag = [ ]; systems.www.toplevel = null; }`, []string{"plan"},
		[]string{"nix.build: unknown attribute flag; did you mean flags?"}},
	{"defaults typo once", `{ defaults.usr = "root"; systems.www.toplevel = null;
	    instances = builtins.listToAttrs (map (n: { name = "h${toString n}"; value.system = "www"; }) (builtins.genList (x: x) 300)); }`,
		[]string{"plan"}, []string{"defaults: unknown attribute usr; did you mean user?", "invalid hive (1 problem)"}},
	{"defaults bad type once", `{ defaults.port = "22"; systems.www.toplevel = null; instances.a.system = "www"; instances.b.system = "www"; }`,
		[]string{"plan"}, []string{"defaults: attribute port: expected a port number (1-65535), got a string", "(1 problem)"}},
	{"defaults swapped letters", `{ defaults.prot = 22; systems.www.toplevel = null; instances.a.system = "www"; }`,
		[]string{"plan"}, []string{"defaults: unknown attribute prot; did you mean port?"}},
	{"systems misspelt: said once", `{ sytsems.www.toplevel = null; instances.a.system = "www"; instances.b.system = "www"; }`,
		[]string{"plan"}, []string{"hive: unknown attribute sytsems; did you mean systems?",
			"hive: attribute systems: no system is defined, and every instance needs one", "(2 problems)"}},
	{"systems not a set: said once", `{ systems = [ ]; instances.a.system = "www"; instances.b.system = "www"; }`,
		[]string{"plan"}, []string{"hive: attribute systems: expected an attribute set of systems, got a list", "(1 problem)"}},
	{"instance attribute typo", `{ systems.www.toplevel = null; instances.a = { system = "www"; hostkey = "x"; }; }`, []string{"plan"},
		[]string{`instance "a": unknown attribute hostkey; did you mean hostKey?`}},
	{"unknown system", `{ systems.www.toplevel = null; instances.a.system = "wwww"; }`, []string{"plan"},
		[]string{`instance "a": attribute system: unknown system "wwww"; did you mean "www"?`}},
	{"unknown system far", `{ systems.www.toplevel = null; instances.a.system = "database"; }`, []string{"plan"},
		[]string{`unknown system "database" (known: www)`}},
	{"unknown jump", `{ systems.www.toplevel = null; instances.portico.system = "www"; instances.a = { system = "www"; jump = "portco"; }; }`, []string{"plan"},
		[]string{`instance "a": attribute jump: unknown instance "portco"; did you mean "portico"?`}},
	{"system typo", `{ systems.www.mdoules = [ ]; }`, []string{"plan"},
		[]string{`system "www": unknown attribute mdoules; did you mean modules?`, `system "www": needs one of modules, configuration or toplevel`}},
	{"key typo", `{ systems.www.toplevel = null; instances.a = { system = "www"; keys.k.txt = "x"; }; }`, []string{"plan"},
		[]string{`instance "a": key "k": unknown attribute txt; did you mean text?`}},
	{"key timeout", `{ systems.www.toplevel = null; instances.a = { system = "www"; keys.k = { command = "pass show k"; timeout = 30; }; }; }`, []string{"plan"},
		[]string{`instance "a": key "k": attribute timeout: expected a duration such as "30s", "5m" or "1h30m", got an integer`}},
	{"missing nixpkgs", `{ systems.db.modules = [ ]; instances.c.system = "db"; }`, []string{"build"},
		[]string{`system "db": its modules need nixpkgs, and none is set: add paths.nixpkgs`}},
	{"syntax error", `{ x = ; }`, []string{"plan"}, []string{"hive.nix:1:7", "syntax error"}},
	{"target typo", `{ systems.www.toplevel = null; instances.portico.system = "www"; }`, []string{"plan", "portco"},
		[]string{`target "portco" matches no instance`, `did you mean "portico"?`}},
	{"tag typo", `{ systems.www.toplevel = null; instances.a = { system = "www"; tags = [ "canary" ]; }; }`, []string{"plan", "@canry"},
		[]string{`target "@canry" matches no instance`, `did you mean "@canary"?`}},
	{"ssh option running a local command", `{ systems.www.toplevel = null; instances.a = { system = "www"; ssh.ProxyCommand = "nc %h %p"; }; }`,
		[]string{"run", "a", "--", "true"}, []string{`hive.nix: instance "a": attribute ssh: ssh option ProxyCommand is refused`}},
	{"ssh option outside the allowlist", `{ systems.www.toplevel = null; instances.a = { system = "www"; ssh = { SendEnv = "*"; ForwardAgent = "yes"; ControlPath = "/tmp/x"; GlobalKnownHostsFile = "/dev/null"; }; }; }`,
		[]string{"plan", "--offline"}, []string{"ssh option SendEnv is refused: it sends something from this machine", "ssh option ForwardAgent is refused",
			"ssh option ControlPath is refused: it shares connections", "ssh option GlobalKnownHostsFile is refused: it decides which host keys are trusted", "(4 problems)"}},
	{"shell in host, user, name, tag, store", `{ systems.www.toplevel = null;
		instances."$(id>pwned)a" = { system = "www"; host = "10.0.0.1"; };
		instances.b = { system = "www"; host = "$(id>pwned)10.0.0.2"; user = "r;id"; storeUser = "-x"; tags = [ "a b" ]; store = "ssh://-oProxyCommand=id@x"; }; }`,
		[]string{"plan", "--offline"}, []string{`instance "$(id>pwned)a": the name is not a valid instance name`, `instance "b": attribute host: "$(id>pwned)10.0.0.2" is not a DNS name`,
			`instance "b": attribute user: "r;id" is not a POSIX login name`, `instance "b": attribute storeUser: "-x" is not a POSIX login name`,
			`instance "b": attribute tags: "a b" is not a valid tag`, `instance "b": attribute store: "ssh://-oProxyCommand=id@x" has a`, "(6 problems)"}},
	{"profiles", `{ systems."../www" = { toplevel = null; profiles = { home = { path = null; usr = "alice"; }; "$(id)" = { path = null; user = "r;id"; activate = "../../bin/sh"; }; tools = 3; }; }; }`,
		[]string{"plan", "--offline"}, []string{`system "../www": profile "home": unknown attribute usr; did you mean user?`, `system "../www": profile "home": attribute user: missing`,
			`system "../www": profile "tools": expected an attribute set with path and user, got an integer`,
			`system "../www": the name is not a valid system name`, `system "../www": profile "$(id)": the name is not a profile name`,
			`system "../www": profile "$(id)": attribute user: "r;id" is not a POSIX login name`,
			`system "../www": profile "$(id)": attribute activate: "../../bin/sh" is not a command inside the profile`}},
	{"bad default user: said once", `{ systems.www.toplevel = null; defaults.user = "$(id)"; instances = builtins.listToAttrs (map (n: { name = "w-${toString n}"; value = { system = "www"; host = "10.0.0.${toString n}"; }; }) [ 1 2 3 4 5 ]); }`,
		[]string{"plan", "--offline"}, []string{`instances "w-1", "w-2", "w-3" and 2 more: attribute user: "$(id)" is not a POSIX login name`, "(1 problem)"}},
}

// nixWorded are the cases whose message Nix words, differently in each
// release: checked and logged, but kept out of the golden file.
var nixWorded = map[string]bool{"missing nixpkgs": true, "syntax error": true}

// TestHiveErrorMessages makes each mistake, checks exit status 2 and the
// message, and collects the messages in testdata/hive_errors.golden
// (UPDATE_GOLDEN=1 rewrites it), where they can be reviewed side by side.
func TestHiveErrorMessages(t *testing.T) {
	nixtest.Require(t)
	t.Setenv("NIX_PATH", "") // the missing-nixpkgs case must not find one
	root, _ := filepath.Abs("..")
	ts := filepath.Join(root, "examples", "testsystems")
	var golden, all strings.Builder
	for _, tc := range hiveErrorCases {
		dir := t.TempDir()
		writeFile(t, filepath.Join(dir, "hive.nix"), strings.ReplaceAll(tc.hive, "{TS}", ts))
		var o, e bytes.Buffer
		code := cli.Main("test", append([]string{"-c", dir}, tc.args...), &o, &e)
		msg := strings.ReplaceAll(e.String(), dir, "$DIR")
		if code != 2 {
			t.Errorf("%s: exit %d, want 2\n%s", tc.name, code, msg)
		}
		for _, w := range tc.want {
			if !strings.Contains(msg, w) {
				t.Errorf("%s: message lacks %q:\n%s", tc.name, w, msg)
			}
		}
		if strings.Contains(msg, "eval.nix") || strings.Contains(msg, "--apply") {
			t.Errorf("%s: the internal nix command line is shown without -v:\n%s", tc.name, msg)
		}
		entry := fmt.Sprintf("## %s: nix-hive %s\n%s\n", tc.name, strings.Join(tc.args, " "), msg)
		all.WriteString(entry)
		if !nixWorded[tc.name] {
			golden.WriteString(entry)
		}
	}
	t.Logf("every hive error message:\n%s", all.String())
	path := filepath.Join("testdata", "hive_errors.golden")
	if os.Getenv("UPDATE_GOLDEN") != "" {
		if err := os.WriteFile(path, []byte(golden.String()), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (UPDATE_GOLDEN=1 writes it)", err)
	}
	if string(want) != golden.String() {
		t.Errorf("messages differ from %s (review, then UPDATE_GOLDEN=1):\n%s", path, golden.String())
	}
}

// A hive without a signing key whose instances substitute from a store is
// refused before anything is contacted, pointing at nix-hive keygen.
func TestNoSigningKeyForConsumers(t *testing.T) {
	nixtest.Require(t)
	root, _ := filepath.Abs("..")
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "hive.nix"), fmt.Sprintf(`{ systems.www.toplevel = import %s { name = "www"; version = "%s"; };
  instances.s = { system = "www"; host = "127.77.0.1"; };
  instances.c = { system = "www"; host = "127.77.0.2"; store = "s"; }; }`, filepath.Join(root, "examples", "testsystems"), t.Name()))
	var o, e bytes.Buffer
	code := cli.Main("test", []string{"-c", dir, "deploy", "--connect-timeout", "1s"}, &o, &e)
	if code != 2 || !strings.Contains(e.String(), "instance c substitutes from a store") || !strings.Contains(e.String(), "nix-hive keygen") {
		t.Errorf("exit %d:\n%s", code, e.String())
	}
	if strings.Contains(o.String()+e.String(), "push") {
		t.Errorf("something was pushed:\n%s%s", o.String(), e.String())
	}
	// plan warns of it.
	e.Reset()
	if code := cli.Main("test", []string{"-c", dir, "plan", "--offline"}, &o, &e); code != 0 || !strings.Contains(e.String(), "warning: ") || !strings.Contains(e.String(), "nix-hive keygen") {
		t.Errorf("plan of consumers without a signing key: exit %d, no warning:\n%s", code, e.String())
	}
}

// The exit-status contract, command by command: 0 ok, 1 a host failed, 2
// a usage error or a mistake in the hive, 130 interrupted (the fault
// suite), 255 ssh's own connection failure.
func TestExitStatusContract(t *testing.T) {
	nixtest.Require(t)
	bad := t.TempDir()
	writeFile(t, filepath.Join(bad, "hive.nix"), `{ systems.www.toplevel = null; instances.a = { system = "www"; hostkey = "x"; }; }`)
	good := t.TempDir()
	writeFile(t, filepath.Join(good, "hive.nix"), `{ systems.www.toplevel = null; instances.a = { system = "www"; host = "127.77.0.1"; };
  instances.www-1 = { system = "www"; host = "127.77.0.1"; }; }`)
	commands := [][]string{
		{"build"}, {"plan"}, {"deploy"}, {"status"}, {"rollback", "*"}, {"run", "*", "--", "true"},
		{"ssh", "a"}, {"scp", "/etc/hostname", "a:/tmp/x"}, {"keys", "list"}, {"keys", "upload"}, {"ssh-config"},
	}
	run := func(dir string, args ...string) (int, string) {
		var o, e bytes.Buffer
		code := cli.Main("test", append([]string{"-c", dir}, args...), &o, &e)
		return code, e.String()
	}
	for _, c := range commands {
		name := strings.Join(c, " ")
		at := 1 // the flag goes before the arguments, which may be passed through
		if c[0] == "keys" {
			at = 2
		}
		withFlag := append(append(append([]string(nil), c[:at]...), "--no-such-flag"), c[at:]...)
		if code, msg := run(good, withFlag...); code != 2 {
			t.Errorf("%s --no-such-flag: exit %d, want 2 (usage)\n%s", name, code, msg)
		}
		if code, msg := run(bad, c...); code != 2 || !strings.Contains(msg, "hostkey") {
			t.Errorf("%s on an invalid hive: exit %d, want 2\n%s", name, code, msg)
		}
	}
	for _, c := range [][]string{{"plan", "nope"}, {"deploy", "nope"}, {"status", "nope"}, {"rollback", "nope"}, {"run", "nope", "--", "true"}, {"keys", "list", "nope"}} {
		if code, msg := run(good, c...); code != 2 || !strings.Contains(msg, "matches no instance") {
			t.Errorf("%s: exit %d, want 2 (a target matching nothing)\n%s", strings.Join(c, " "), code, msg)
		}
	}
	for _, c := range [][]string{{"rollback"}, {"run", "--", "uname"}, {"deploy", "--reboot"},
		{"scp", "/etc/hostname", "/tmp/x"}, {"scp", "a:/x", "a:/y"}} {
		if code, msg := run(good, c...); code != 2 {
			t.Errorf("%s: exit %d, want 2 (usage)\n%s", strings.Join(c, " "), code, msg)
		}
	}
	// An instance named on the command line that the hive lacks: 2, with
	// the nearest name.
	for _, c := range [][]string{{"ssh", "www-9"}, {"ssh", "www-9", "true"}, {"scp", "/etc/hostname", "www-9:/tmp/x"}, {"scp", "www-9:/etc/hostname", "/tmp/x"},
		{"apply-local", "--instance", "www-9"}} {
		if code, msg := run(good, c...); code != 2 || !strings.Contains(msg, `no instance "www-9"`) || !strings.Contains(msg, `did you mean "www-1"?`) {
			t.Errorf("%s: exit %d, want 2 (no such instance, did you mean www-1)\n%s", strings.Join(c, " "), code, msg)
		}
	}
	// A tool the command line needs is missing: 2 (TestPlanSVGNeedsGraphviz).
	if code, msg := run(filepath.Join(good, "nowhere"), "plan"); code != 2 || !strings.Contains(msg, "nowhere") {
		t.Errorf("-c to a missing hive: exit %d, want 2\n%s", code, msg)
	}
	var o, e bytes.Buffer
	if code := cli.Main("test", nil, &o, &e); code != 0 || !strings.Contains(o.String(), "Usage: nix-hive <command>") || !strings.Contains(o.String(), "deploy") {
		t.Errorf("nix-hive alone: exit %d, want the help:\n%s%s", code, o.String(), e.String())
	}
}
