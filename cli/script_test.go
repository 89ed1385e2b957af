package cli_test

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/rogpeppe/go-internal/testscript"

	"github.com/nix-hive/nix-hive/cli"
	"github.com/nix-hive/nix-hive/internal/nixtest"
)

func TestMain(m *testing.M) {
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
			env.Setenv("XDG_CACHE_HOME", filepath.Join(env.WorkDir, ".cache"))
			return nil
		},
		Cmds: map[string]func(ts *testscript.TestScript, neg bool, args []string){
			"storecount": cmdStoreCount,
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
