package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/nix-hive/nix-hive/internal/nixtest"
	"github.com/nix-hive/nix-hive/internal/testenv"
)

// `nix-hive --version` names the commit it was built from, however it was
// built: by go build in a git clone (from what the toolchain records),
// with -buildvcs=false (nothing to name), and by Nix from a tarball made
// by git archive, as GitHub makes them (from the commit git writes into
// default.nix, which package.nix gives the linker).
//
// The clone is a fresh repository holding this checkout's release files,
// so the commit and whether the tree is modified are the test's own. The
// builds use -trimpath, so that they share the build cache.
func TestVersionNamesTheCommit(t *testing.T) {
	testenv.Tool(t, "git", "the builds are made from a git clone")
	nixtest.Require(t)
	lib := nixtest.NixpkgsLib(t)
	root, _ := filepath.Abs("../..")

	repo := filepath.Join(t.TempDir(), "nix-hive")
	for _, f := range releaseFiles(t, root) {
		data, err := os.ReadFile(filepath.Join(root, f))
		if err != nil {
			t.Fatal(err)
		}
		st, err := os.Lstat(filepath.Join(root, f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Dir(filepath.Join(repo, f)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(repo, f), data, st.Mode().Perm()); err != nil {
			t.Fatal(err)
		}
	}
	gitEnv := []string{"GIT_CONFIG_GLOBAL=/dev/null", "GIT_CONFIG_NOSYSTEM=1",
		"GIT_AUTHOR_NAME=test", "GIT_AUTHOR_EMAIL=test@example.invalid",
		"GIT_COMMITTER_NAME=test", "GIT_COMMITTER_EMAIL=test@example.invalid"}
	run(t, repo, gitEnv, "git", "init", "-q")
	run(t, repo, gitEnv, "git", "add", "-A")
	run(t, repo, gitEnv, "git", "commit", "-q", "-m", "release")
	commit := strings.TrimSpace(run(t, repo, gitEnv, "git", "rev-parse", "HEAD"))

	bin := filepath.Join(t.TempDir(), "nix-hive")
	// GOFLAGS from the environment, which overrides `go env -w` (this
	// machine's sets -buildvcs=false): as in a plain go build by default.
	version := func(dir, goflags string, args ...string) string {
		t.Helper()
		env := []string{"GOFLAGS=-trimpath " + goflags, "GOWORK=off", "GOPROXY=off"}
		run(t, dir, env, "go", append(append([]string{"build", "-o", bin}, args...), "./cmd/nix-hive")...)
		return strings.TrimSpace(run(t, "", nil, bin, "--version"))
	}
	goVersion := `, go[0-9.]+$`

	clean := version(repo, "")
	if want := "nix-hive dev, revision " + commit[:12] + " ("; !strings.HasPrefix(clean, want) ||
		strings.Contains(clean, "uncommitted") || !regexp.MustCompile(`\), go[0-9.]+$`).MatchString(clean) {
		t.Errorf("go build in a clone: --version %q, want %q…", clean, want)
	}
	if v := version(repo, "-buildvcs=false"); !regexp.MustCompile(`^nix-hive dev` + goVersion).MatchString(v) {
		t.Errorf("go build -buildvcs=false: --version %q, want no revision", v)
	}
	if err := os.WriteFile(filepath.Join(repo, "README.md"), []byte("changed\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if v := version(repo, ""); !strings.HasPrefix(v, "nix-hive dev, revision "+commit[:12]+" (") || !strings.Contains(v, ") with uncommitted changes, go") {
		t.Errorf("go build in a modified clone: --version %q", v)
	}

	// A tarball of the commit, as GitHub serves it, installed without
	// flakes: default.nix with a stand-in nixpkgs gives package.nix's
	// ldflags, and the build buildGoModule would make (no .git; the
	// vendor directory, whose hash other tests check, makes no
	// difference here) uses them.
	tarball := filepath.Join(t.TempDir(), "nix-hive-archive.tar.gz")
	run(t, repo, gitEnv, "git", "archive", "--format=tar.gz", "--prefix=nix-hive-archive/", "-o", tarball, "HEAD")
	var pkg struct {
		Version string   `json:"version"`
		Ldflags []string `json:"ldflags"`
		Source  string   `json:"source"`
	}
	nixEvalJSON(t, `
let
  pkg = import ((builtins.fetchTarball "file://`+tarball+`") + "/default.nix") { pkgs = `+stubPkgs(lib)+` (_: true); };
in { inherit (pkg) version ldflags; source = "${pkg.src}"; }`, &pkg)
	if !strings.Contains(strings.Join(pkg.Ldflags, " "), "-X main.revision="+commit) {
		t.Fatalf("default.nix of git archive's tarball does not stamp the commit %s: ldflags %q", commit, pkg.Ldflags)
	}
	want := "nix-hive " + pkg.Version + ", revision " + commit[:12]
	if v := version(pkg.Source, "", "-ldflags="+strings.Join(pkg.Ldflags, " ")); !regexp.MustCompile("^" + regexp.QuoteMeta(want) + goVersion).MatchString(v) {
		t.Errorf("built from git archive's tarball: --version %q, want %q", v, want)
	}

	// A checkout (no git archive): the placeholder stays, and no
	// revision is claimed.
	nixEvalJSON(t, `(import `+repo+`/default.nix { pkgs = `+stubPkgs(lib)+` (_: true); }).ldflags`, &pkg.Ldflags)
	if strings.Contains(strings.Join(pkg.Ldflags, " "), "main.revision") {
		t.Errorf("default.nix in a checkout stamps a revision: %q", pkg.Ldflags)
	}
}
