package cli_test

import (
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The hive's nix.build.flags reach the build: with Nix's own remote
// builders (--builders, and --max-jobs 0 so that nothing builds here),
// app-2 of the lab builds app-1's new system, which the deploy then signs,
// pushes and activates as usual. The builder's store holds the system
// (nothing else put it there), and app-1 runs it.
func TestBuildFlagsRemoteBuilder(t *testing.T) {
	f := newFaultLab(t, 2)
	f.baseline()
	b := f.lab.Host("app-2")
	hostKey := base64.StdEncoding.EncodeToString([]byte(b.HostKey))
	builders := fmt.Sprintf("ssh-ng://root@%s x86_64-linux %s 1 1 - - %s", b.Addr, f.lab.ClientKey, hostKey)
	hive, err := os.ReadFile(filepath.Join(f.dir, "hive.nix"))
	if err != nil {
		t.Fatal(err)
	}
	f.write("hive.nix", strings.Replace(string(hive), `signing.keyFile = "keys/hive.sec";`,
		`signing.keyFile = "keys/hive.sec"; nix.build.flags = [ "--builders" "`+builders+`" "--max-jobs" "0" ];`, 1))
	// A version no earlier run built, so that this one must build it.
	version := fmt.Sprintf("remote%d", time.Now().UnixNano())
	f.variants(map[string]string{"app-1": `version = "` + version + `";`})
	code, out, _ := f.run("deploy", "--connect-timeout", faultConnect, "app-1")
	if code != 0 {
		t.Fatalf("deploy: exit %d", code)
	}
	summaryHas(t, out, "app-1", " ok ")
	path := f.built("app-1")
	if !strings.HasSuffix(path, "-"+version) {
		t.Fatalf("app-1's system is %s", path)
	}
	if _, err := os.Stat(b.Path(path)); err != nil {
		t.Errorf("the builder's store lacks %s: it was not built there (%v)", path, err)
	}
	if got := f.system("app-1"); got.active != path {
		t.Errorf("app-1 runs %+v, want %s", got, path)
	}
}

// --build-host INSTANCE (and the hive's nix.build.host) is the same
// machinery without writing it: the builder line and the ssh config come
// from the hive (its address and pinned host key), the build happens
// there, and the deploy signs, pushes and activates as usual. A build
// host that is no instance is a hive error.
func TestBuildHost(t *testing.T) {
	f := newFaultLab(t, 2)
	f.baseline()
	b := f.lab.Host("app-2")
	deployed := func(how string, args ...string) {
		t.Helper()
		version := fmt.Sprintf("bh%d", time.Now().UnixNano())
		f.variants(map[string]string{"app-1": `version = "` + version + `";`})
		code, out, errOut := f.run(append([]string{"deploy", "--connect-timeout", faultConnect}, args...)...)
		if code != 0 {
			t.Fatalf("%s: exit %d", how, code)
		}
		summaryHas(t, out, "app-1", " ok ")
		path := f.built("app-1")
		if !strings.HasSuffix(path, "-"+version) {
			t.Fatalf("%s: app-1's system is %s", how, path)
		}
		if !strings.Contains(errOut, "on 'ssh-ng://app-2'") {
			t.Errorf("%s: nix did not say it built on app-2:\n%s", how, errOut)
		}
		if _, err := os.Stat(b.Path(path)); err != nil {
			t.Errorf("%s: the builder's store lacks %s (%v)", how, path, err)
		}
		if got := f.system("app-1"); got.active != path {
			t.Errorf("%s: app-1 runs %+v, want %s", how, got, path)
		}
	}
	deployed("--build-host", "--build-host", "app-2", "app-1")

	hive, err := os.ReadFile(filepath.Join(f.dir, "hive.nix"))
	if err != nil {
		t.Fatal(err)
	}
	f.write("hive.nix", strings.Replace(string(hive), `signing.keyFile = "keys/hive.sec";`,
		`signing.keyFile = "keys/hive.sec"; nix.build.host = "app-2";`, 1))
	deployed("nix.build.host", "app-1")

	f.write("hive.nix", strings.Replace(string(hive), `signing.keyFile = "keys/hive.sec";`,
		`signing.keyFile = "keys/hive.sec"; nix.build.host = "app-9";`, 1))
	if code, _, errOut := f.run("build"); code != 2 || !strings.Contains(errOut, `nix.build.host: unknown instance "app-9"`) {
		t.Errorf("an unknown build host: exit %d:\n%s", code, errOut)
	}
}
