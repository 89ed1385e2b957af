package cli_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// An instance with several addresses (host = [ ... ]) is reached at the
// first that answers, for nix-hive's own connections (the deploy, its
// push over the deploy's connection, the confirmation's new one, run,
// status) and for ssh-config: here app-1's first address refuses
// connections and its second accepts TCP and never speaks (app-2,
// silenced), so only the third, its own, answers. status shows which
// address was used; ssh-config writes it as HostName.
func TestSeveralAddresses(t *testing.T) {
	f := newFaultLab(t, 2)
	v1 := f.baseline()
	real, silent := f.lab.Host("app-1").Addr, f.lab.Host("app-2").Addr
	const refused = "127.77.250.250" // on loopback, where nothing listens
	silence(t, f.lab.Host("app-2"))
	b, err := os.ReadFile(filepath.Join(f.dir, "hive.nix"))
	if err != nil {
		t.Fatal(err)
	}
	f.write("hive.nix", strings.Replace(string(b), "v // { system = n; }",
		`v // { system = n; } // (if n == "app-1" then { host = [ "`+refused+`" "`+silent+`" v.host ]; } else { })`, 1))
	f.variants(map[string]string{"app-1": `version = "2";`})

	code, out, _ := f.run("deploy", "--connect-timeout", faultConnect, "app-1")
	if code != 0 {
		t.Fatalf("deploy: exit %d", code)
	}
	summaryHas(t, out, "app-1", " ok ")
	if got := f.system("app-1"); got.active == v1["app-1"] || got.active != f.built("app-1") {
		t.Errorf("app-1 runs %+v, want %s", got, f.built("app-1"))
	}
	code, out, _ = f.run("status", "--connect-timeout", faultConnect, "app-1")
	if code != 0 || !strings.Contains(out, "ADDRESS") || !strings.Contains(out, " "+real) {
		t.Errorf("status: exit %d, want the address used (%s):\n%s", code, real, out)
	}
	code, out, _ = f.run("run", "--connect-timeout", faultConnect, "app-1", "--", "hostname")
	if code != 0 || !strings.Contains(out, "app-1") {
		t.Errorf("run: exit %d:\n%s", code, out)
	}
	// A connection holder started afresh dials the addresses itself,
	// the silent one included, within the bound it gives a dial.
	f.run("mux", "stop")
	if code, _, _ := f.run("mux", "start", "--connect-timeout", faultConnect, "app-1"); code != 0 {
		t.Fatalf("mux start: exit %d", code)
	}
	code, out, _ = f.run("run", "--connect-timeout", faultConnect, "app-1", "--", "hostname")
	if code != 0 || !strings.Contains(out, "app-1") {
		t.Errorf("run through a new holder: exit %d:\n%s", code, out)
	}
	f.run("mux", "stop")
	code, out, _ = f.run("ssh-config")
	if code != 0 || !strings.Contains(out, "\tHostName "+real+"\n") || !strings.Contains(out, "# the instance's addresses: "+real+" "+refused+" "+silent) {
		t.Errorf("ssh-config: exit %d:\n%s", code, out)
	}
	// An address in the list is held to the hive's rules as host is.
	f.write("hive.nix", strings.Replace(string(b), "v // { system = n; }",
		`v // { system = n; } // (if n == "app-1" then { host = [ v.host "-oProxyCommand=x" ]; } else { })`, 1))
	if code, _, errOut := f.run("status", "app-1"); code != 2 || !strings.Contains(errOut, `instance "app-1": attribute host: "-oProxyCommand=x"`) {
		t.Errorf("a bad second address: exit %d:\n%s", code, errOut)
	}
}
