package cli_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rogpeppe/go-internal/testscript"

	"github.com/nix-hive/nix-hive/cli"
	"github.com/nix-hive/nix-hive/internal/nixtest"
	"github.com/nix-hive/nix-hive/internal/testenv"
	"github.com/nix-hive/nix-hive/lab"
)

func TestMain(m *testing.M) {
	// A holder started by one test's command would serve the next ones and
	// outlive the run: tests that want one say so (TestMuxPersist). Not
	// when this binary runs as a test's nix-hive: that one's environment
	// is the test's.
	if filepath.Base(os.Args[0]) != "nix-hive" {
		os.Setenv("NIX_HIVE_MUX_PERSIST", "0")
	}
	// Every nix-hive a test runs is this binary; built with -race, each
	// would sleep a second at exit for races after main (scripts/test says
	// more). Races during the run are still reported.
	if os.Getenv("GORACE") == "" {
		os.Setenv("GORACE", "atexit_sleep_ms=0")
	}
	testscript.Main(m, map[string]func(){
		"nix-hive": func() { os.Exit(cli.Main("test", os.Args[1:], os.Stdout, os.Stderr)) },
	})
}

// TestScripts runs testdata/script/*.txtar against the real binary and the
// real nix. Set UPDATE_GOLDEN=1 to rewrite cmp targets.
func TestScripts(t *testing.T) {
	nixtest.Require(t)
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	testscript.Run(t, testscript.Params{
		Dir:                 "testdata/script",
		RequireExplicitExec: true,
		UpdateScripts:       os.Getenv("UPDATE_GOLDEN") != "",
		Setup: func(env *testscript.Env) error {
			b := make([]byte, 6)
			rand.Read(b)
			env.Setenv("NONCE", hex.EncodeToString(b))
			env.Setenv("TESTSYSTEMS", filepath.Join(root, "examples", "testsystems"))
			env.Setenv("EXAMPLES", filepath.Join(root, "examples"))
			env.Setenv("NIX_CONFIG", nixtest.Config)
			env.Setenv("NIX_HIVE_MUX_PERSIST", "0")
			env.Setenv("XDG_CACHE_HOME", filepath.Join(env.WorkDir, ".cache"))
			return nil
		},
		Condition: func(cond string) (bool, error) {
			if cond != "lab" {
				return false, fmt.Errorf("unknown condition %q", cond)
			}
			err := lab.Check()
			if err != nil && testenv.CI() {
				return false, fmt.Errorf("CI: lab scripts cannot run: %v", err)
			}
			return err == nil, nil
		},
		Cmds: map[string]func(ts *testscript.TestScript, neg bool, args []string){
			"storecount": cmdStoreCount,
			"seedlab":    cmdSeedLab,
			"trustkey":   cmdTrustKey,
			"hostread":   cmdHostRead,
			"waitfor":    cmdWaitFor,
		},
	})
}

// storecount SUBSTRING N: exactly N store paths (not .drv) have SUBSTRING in
// their name. How a script proves what was, or was not, realised.
func cmdStoreCount(ts *testscript.TestScript, neg bool, args []string) {
	if len(args) != 2 {
		ts.Fatalf("usage: storecount SUBSTRING N")
	}
	want, err := strconv.Atoi(args[1])
	if err != nil {
		ts.Fatalf("storecount: %v", err)
	}
	ents, err := os.ReadDir("/nix/store")
	ts.Check(err)
	var got []string
	for _, e := range ents {
		n := e.Name()
		if strings.Contains(n, args[0]) && !strings.HasSuffix(n, ".drv") && !strings.HasSuffix(n, ".lock") {
			got = append(got, n)
		}
	}
	if (len(got) == want) == neg {
		ts.Fatalf("store paths containing %q: %d %v, want %s%d", args[0], len(got), got, map[bool]string{true: "not ", false: ""}[neg], want)
	}
	fmt.Fprintf(ts.Stdout(), "%d store paths\n", len(got))
}

var scriptLabs sync.Map // *testscript.TestScript -> *lab.Lab

func scriptLab(ts *testscript.TestScript) *lab.Lab {
	l, ok := scriptLabs.Load(ts)
	if !ok {
		ts.Fatalf("no lab: run seedlab first")
	}
	return l.(*lab.Lab)
}

// seedlab: start the seed topology (portico jump+store, www-1..3 behind
// it, storage), copy the examples to $WORK/examples and point the seed
// hive at the lab. The lab stops when the script ends.
func cmdSeedLab(ts *testscript.TestScript, neg bool, args []string) {
	if err := lab.Check(); err != nil {
		ts.Fatalf("lab: %v (guard lab scripts with [!lab] skip)", err)
	}
	l, err := lab.Start(context.Background(), lab.Config{Hosts: 1, Names: []string{"storage"}, Internal: 3,
		JumpName: "portico", InternalNames: []string{"www-1", "www-2", "www-3"}, Dir: ts.MkAbs("lab")})
	ts.Check(err)
	ts.Defer(func() { l.Close() })
	scriptLabs.Store(ts, l)
	root, _ := filepath.Abs("..")
	ts.Check(exec.Command("cp", "-r", filepath.Join(root, "examples"), ts.MkAbs("examples")).Run())
	ts.Check(os.WriteFile(ts.MkAbs("examples/seed/lab.nix"), []byte(l.HiveNix()), 0o644))
}

// trustkey PUBFILE: every lab host trusts the key in PUBFILE, as
// lib/module.nix would arrange on NixOS.
func cmdTrustKey(ts *testscript.TestScript, neg bool, args []string) {
	if len(args) != 1 {
		ts.Fatalf("usage: trustkey PUBFILE")
	}
	key := strings.TrimSpace(ts.ReadFile(args[0]))
	for _, h := range scriptLab(ts).Hosts {
		ts.Check(h.WriteNixConf("trusted-public-keys = " + key))
	}
}

// hostread HOST PATH: print a file (or a symlink's target) inside a host;
// ! hostread HOST PATH: PATH does not exist there.
func cmdHostRead(ts *testscript.TestScript, neg bool, args []string) {
	if len(args) != 2 {
		ts.Fatalf("usage: hostread HOST PATH")
	}
	h := scriptLab(ts).Host(args[0])
	if h == nil {
		ts.Fatalf("no lab host %s", args[0])
	}
	p := h.Path(args[1])
	_, err := os.Lstat(p)
	switch {
	case neg && err == nil:
		ts.Fatalf("hostread: %s exists on %s", args[1], args[0])
	case neg && errors.Is(err, fs.ErrNotExist):
		return
	case err != nil:
		ts.Fatalf("hostread: %v", err)
	}
	if target, err := os.Readlink(p); err == nil {
		fmt.Fprintln(ts.Stdout(), target)
		return
	}
	b, err := os.ReadFile(p)
	ts.Check(err)
	ts.Stdout().Write(b)
}

// waitfor HOST PATH: wait up to 60s until PATH exists inside HOST.
func cmdWaitFor(ts *testscript.TestScript, neg bool, args []string) {
	if len(args) != 2 {
		ts.Fatalf("usage: waitfor HOST PATH")
	}
	p := scriptLab(ts).Host(args[0]).Path(args[1])
	for i := 0; i < 600; i++ {
		if _, err := os.Stat(p); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	ts.Fatalf("waitfor: %s did not appear on %s", args[1], args[0])
}
