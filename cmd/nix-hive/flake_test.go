package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/nix-hive/nix-hive/cli"
	"github.com/nix-hive/nix-hive/internal/nixtest"
	"github.com/nix-hive/nix-hive/nixcmd"
)

var vendorHashRE = regexp.MustCompile(`vendorHash = "([^"]+)";`)

// packageVendorHash is the vendorHash package.nix in dir declares.
func packageVendorHash(t *testing.T, dir string) (pkg []byte, hash string) {
	t.Helper()
	pkg, err := os.ReadFile(filepath.Join(dir, "package.nix"))
	if err != nil {
		t.Fatal(err)
	}
	m := vendorHashRE.FindSubmatch(pkg)
	if m == nil {
		t.Fatalf("%s/package.nix has no vendorHash", dir)
	}
	return pkg, string(m[1])
}

// vendorHash recomputes, for the module in dir, the hash buildGoModule
// checks vendorHash against: the NAR hash of `go mod vendor`'s output. It
// also returns that output.
func vendorHash(t *testing.T, dir string) (hash, vendor string) {
	t.Helper()
	vendor = filepath.Join(t.TempDir(), "vendor")
	cmd := exec.Command("go", "mod", "vendor", "-o", vendor)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go mod vendor in %s: %v\n%s", dir, err, out)
	}
	r := &nixcmd.Runner{}
	out, err := r.Run(context.Background(), "nix", "hash", "path", vendor)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(out)), vendor
}

// package.nix's vendorHash must match go.sum, or building the package
// fails for every user, with the flake and with default.nix alike.
func TestFlakeVendorHash(t *testing.T) {
	nixtest.Require(t)
	pkg, want := packageVendorHash(t, "../..")
	got, _ := vendorHash(t, "../..")
	if got != want && os.Getenv("UPDATE_GOLDEN") != "" {
		updated := strings.Replace(string(pkg), want, got, 1)
		if err := os.WriteFile("../../package.nix", []byte(updated), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	if got != want {
		t.Fatalf("package.nix vendorHash = %s, but go.sum needs %s: update package.nix (or run with UPDATE_GOLDEN=1)", want, got)
	}
}

// stubPkgs is a Nix function from canExecute (the build platform's, for
// cross builds) to a stand-in for nixpkgs' package set, which is not
// reachable offline. Its lib and callPackage are nixpkgs' real ones;
// buildGoModule and mkShell return what they are given (with the
// attributes that make nix-env take it for a derivation), so the tests
// see what package.nix and mkDevShell pass them.
func stubPkgs(lib string) string {
	return `(canExecute: let
  lib = import ` + lib + `/lib;
  pkgs = {
    inherit lib;
    callPackage = lib.callPackageWith pkgs;
    stdenv = { buildPlatform = { inherit canExecute; }; hostPlatform.system = "x86_64-linux"; };
    installShellFiles = { name = "installShellFiles"; };
    buildGoModule = args: args // {
      type = "derivation"; name = "${args.pname}-${args.version}"; system = "x86_64-linux";
      outPath = "/nix/store/fake-${args.pname}-${args.version}";
    };
    mkShell = args: args // { madeBy = "mkShell"; };
    go = "go"; gopls = "gopls"; openssh = { name = "openssh"; }; nix = "nix"; nftables = "nft"; iproute2 = "ip";
  };
in pkgs)`
}

// stubNixpkgs is a stand-in for the flake's nixpkgs input.
func stubNixpkgs(lib string) string {
	return `(let lib = import ` + lib + `/lib; in {
  inherit lib;
  legacyPackages = lib.genAttrs [ "x86_64-linux" "aarch64-linux" "x86_64-darwin" "aarch64-darwin" ] (_: ` + stubPkgs(lib) + ` (_: true));
})`
}

func nixEvalJSON(t *testing.T, expr string, v any) {
	t.Helper()
	r := &nixcmd.Runner{}
	out, err := r.Run(context.Background(), "nix", "eval", "--json", "--impure", "--expr", expr)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(out, v); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
}

// Evaluates the flake's outputs against a stand-in nixpkgs (the real one is
// not reachable offline) to check their shape: lib.mkHive is the embedded
// library, the package is package.nix's and builds cmd/nix-hive, the app
// runs it.
func TestFlakeOutputs(t *testing.T) {
	nixtest.Require(t)
	lib := nixtest.NixpkgsLib(t)
	root, _ := filepath.Abs("../..")
	_, vendor := packageVendorHash(t, root)
	expr := `
let
  flake = import ` + root + `/flake.nix;
  out = flake.outputs { self = out; nixpkgs = ` + stubNixpkgs(lib) + `; };
  pkg = out.packages.x86_64-linux.default;
  hive = out.lib.mkHive { systems.a.toplevel = null; instances.x.system = "a"; };
  takes = revision: (builtins.tryEval (pkg.override { inherit revision; }).ldflags).success;
in {
  subPackages = pkg.subPackages;
  mainProgram = pkg.meta.mainProgram;
  vendorHash = pkg.vendorHash;
  app = out.apps.x86_64-linux.default.program;
  instances = builtins.attrNames hive.inventory.instances;
  module = builtins.isPath out.nixosModules.default;
  devShell = builtins.isFunction out.lib.mkDevShell;
  # What the package stamps into --version for each kind of source.
  ldflags = let
    from = self: (flake.outputs { inherit self; nixpkgs = ` + stubNixpkgs(lib) + `; }).packages.x86_64-linux.default.ldflags;
  in {
    clean = from (out // { rev = "` + testCommit + `"; });
    dirty = from (out // { dirtyRev = "` + testCommit + `-dirty"; });
    unknown = pkg.ldflags;
  };
  # Nothing but a commit reaches the linker's command line.
  refused = takes "main -X main.version=evil";
  accepted = takes "` + testCommit[:7] + `";
}`
	var got struct {
		SubPackages []string `json:"subPackages"`
		MainProgram string   `json:"mainProgram"`
		VendorHash  string   `json:"vendorHash"`
		App         string   `json:"app"`
		Instances   []string `json:"instances"`
		Module      bool     `json:"module"`
		DevShell    bool     `json:"devShell"`
		Ldflags     struct {
			Clean, Dirty, Unknown []string
		} `json:"ldflags"`
		Refused  bool `json:"refused"`
		Accepted bool `json:"accepted"`
	}
	nixEvalJSON(t, expr, &got)
	if len(got.SubPackages) != 1 || got.SubPackages[0] != "cmd/nix-hive" || got.MainProgram != "nix-hive" ||
		got.VendorHash != vendor || got.App != "/nix/store/fake-nix-hive-0.1.0/bin/nix-hive" ||
		len(got.Instances) != 1 || !got.Module || !got.DevShell {
		t.Fatalf("unexpected flake outputs: %+v", got)
	}
	if !slices.Contains(got.Ldflags.Clean, "-X main.revision="+testCommit) ||
		!slices.Contains(got.Ldflags.Dirty, "-X main.revision="+testCommit+"-dirty") ||
		slices.ContainsFunc(got.Ldflags.Unknown, func(f string) bool { return strings.Contains(f, "main.revision") }) {
		t.Errorf("the flake's package stamps the wrong revision: %+v", got.Ldflags)
	}
	if got.Refused || !got.Accepted {
		t.Errorf("package.nix takes a revision that is no commit (%v), or refuses an abbreviated commit (%v)", got.Refused, !got.Accepted)
	}
}

// testCommit stands for a commit nix-hive is built from.
const testCommit = "63031cc5c972d634676334fb154ce2ec34bf79cb"

// releaseFiles is what a release tarball of this checkout holds: the
// files git tracks, as they are in the working tree, plus new files not
// yet committed (other than ignored ones), as they will be once they are.
func releaseFiles(t *testing.T, root string) []string {
	t.Helper()
	cmd := exec.Command("git", "ls-files", "-z", "--cached", "--others", "--exclude-standard")
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("git ls-files: %v", err)
	}
	var files []string
	for _, f := range strings.Split(strings.TrimRight(string(out), "\x00"), "\x00") {
		// Deleted in the working tree, not yet in the index.
		if _, err := os.Lstat(filepath.Join(root, f)); err == nil && !slices.Contains(files, f) {
			files = append(files, f)
		}
	}
	slices.Sort(files)
	return files
}

// writeTarball writes files of root as a gzipped tarball with one
// top-level directory, top, as GitHub's and most release tarballs are.
func writeTarball(t *testing.T, root, top string, files []string, path string) {
	t.Helper()
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	dirs := map[string]bool{}
	for _, f := range files {
		for d := filepath.Dir(f); d != "."; d = filepath.Dir(d) {
			dirs[d] = true
		}
	}
	names := []string{""}
	for d := range dirs {
		names = append(names, d)
	}
	slices.Sort(names)
	for _, d := range names {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: filepath.Join(top, d) + "/", Mode: 0o755}); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range files {
		p := filepath.Join(root, f)
		st, err := os.Lstat(p)
		if err != nil {
			t.Fatal(err)
		}
		h, err := tar.FileInfoHeader(st, "")
		if err != nil {
			t.Fatal(err)
		}
		h.Name = filepath.Join(top, f)
		h.Uname, h.Gname, h.Uid, h.Gid = "", "", 0, 0
		if st.Mode()&fs.ModeSymlink != 0 {
			if h.Linkname, err = os.Readlink(p); err != nil {
				t.Fatal(err)
			}
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if st.Mode().IsRegular() {
			data, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := tw.Write(data); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := gz.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

// treeFiles lists the files (not directories) under dir.
func treeFiles(t *testing.T, dir string) []string {
	t.Helper()
	var files []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		files = append(files, rel)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(files)
	return files
}

// installHooks stands in for nixpkgs' installShellFiles setup hook (not
// reachable offline), after its documentation and source: installManPage
// PAGE.SECTION, and installShellCompletion --cmd NAME --bash|--zsh|--fish
// FILE, where FILE may be a pipe such as <(cmd). Like the real hook it
// refuses an empty completion, the only sign that the command in <(...)
// failed.
const installHooks = `
installManPage() {
  local path base section
  for path in "$@"; do
    base=${path##*/}
    section=${base%.gz}
    section=${section##*.}
    if [ -z "$section" ] || [ "$section" = "${base%.gz}" ]; then
      echo "installManPage: $path: no section suffix" >&2
      return 1
    fi
    install -Dm644 -T "$path" "$out/share/man/man$section/$base"
  done
}
installShellCompletion() {
  local shell= cmd= dir name
  while [ $# -gt 0 ]; do
    case $1 in
      --bash|--zsh|--fish) shell=${1#--}; shift; continue ;;
      --cmd) cmd=$2; shift 2; continue ;;
      --*) echo "installShellCompletion: unknown flag $1" >&2; return 1 ;;
    esac
    if [ -p "$1" ] && { [ -z "$shell" ] || [ -z "$cmd" ]; }; then
      echo "installShellCompletion: a pipe needs --bash, --zsh or --fish and --cmd" >&2
      return 1
    fi
    case $shell in
      bash) dir=bash-completion/completions name=$cmd.bash ;;
      zsh) dir=zsh/site-functions name=_$cmd ;;
      fish) dir=fish/vendor_completions.d name=$cmd.fish ;;
    esac
    mkdir -p "$out/share/$dir"
    cat "$1" >"$out/share/$dir/$name"
    if [ ! -s "$out/share/$dir/$name" ]; then
      echo "installShellCompletion: $out/share/$dir/$name is empty" >&2
      return 1
    fi
    shift
  done
}
`

// A release tarball of this checkout must install with
// `nix-env -if <tarball>`: default.nix at its top calls package.nix with
// the caller's pkgs, and the package builds from the tarball alone.
//
// nixpkgs (buildGoModule, installShellFiles) cannot be downloaded here,
// so nix-env -i, which builds, cannot run. What runs instead, for real:
// Nix unpacks the tarball (fetchTarball, as nix-env -f does) and
// evaluates default.nix with nixpkgs' real lib and callPackage and a
// stand-in buildGoModule; nix-env -f <tarball> -qa finds the package; the
// vendorHash check runs on the unpacked tree; the Go build buildGoModule
// would run (vendored, offline, with package.nix's ldflags) runs on the
// source package.nix selects; and its postInstall runs against that
// binary with stand-ins for the installShellFiles functions.
func TestReleaseTarball(t *testing.T) {
	nixtest.Require(t)
	lib := nixtest.NixpkgsLib(t)
	root, _ := filepath.Abs("../..")
	files := releaseFiles(t, root)
	for _, f := range []string{"default.nix", "package.nix", "go.mod", "go.sum", "cmd/nix-hive/main.go"} {
		if !slices.Contains(files, f) {
			t.Fatalf("%s is not in the release (git ls-files)", f)
		}
	}
	// A name of its own: Nix caches what it fetched by URL.
	tarball := filepath.Join(t.TempDir(), "nix-hive.tar.gz")
	writeTarball(t, root, "nix-hive-release", files, tarball)
	url := "file://" + tarball

	stub := stubPkgs(lib)
	var got struct {
		Root        string   `json:"root"`
		Origin      string   `json:"origin"`
		Source      string   `json:"source"`
		Pname       string   `json:"pname"`
		Version     string   `json:"version"`
		VendorHash  string   `json:"vendorHash"`
		SubPackages []string `json:"subPackages"`
		Ldflags     []string `json:"ldflags"`
		DoCheck     bool     `json:"doCheck"`
		Inputs      []string `json:"nativeBuildInputs"`
		PostInstall string   `json:"postInstall"`
		Cross       string   `json:"crossPostInstall"`
		MainProgram string   `json:"mainProgram"`
	}
	nixEvalJSON(t, `
let
  root = builtins.fetchTarball "`+url+`";
  pkg = import (root + "/default.nix") { pkgs = `+stub+` (_: true); };
  cross = import (root + "/default.nix") { pkgs = `+stub+` (_: false); };
in {
  root = toString root;
  origin = toString pkg.src.origSrc;
  source = "${pkg.src}";
  inherit (pkg) pname version vendorHash subPackages ldflags doCheck postInstall;
  nativeBuildInputs = map (p: p.name) pkg.nativeBuildInputs;
  crossPostInstall = cross.postInstall;
  mainProgram = pkg.meta.mainProgram;
}`, &got)

	if got.Origin != got.Root {
		t.Errorf("src is %s, not the unpacked tarball %s", got.Origin, got.Root)
	}
	if unpacked := treeFiles(t, got.Root); !slices.Equal(unpacked, files) {
		t.Errorf("the unpacked tarball holds %d files, the release %d", len(unpacked), len(files))
	}
	if source := treeFiles(t, got.Source); !slices.Equal(source, files) {
		t.Errorf("package.nix's src drops files of the release: %v", diff(files, source))
	}
	hash, vendor := vendorHash(t, got.Root)
	if got.VendorHash != hash {
		t.Errorf("vendorHash = %s, but the tarball's go.sum needs %s", got.VendorHash, hash)
	}
	if got.Pname != "nix-hive" || got.MainProgram != "nix-hive" || !slices.Equal(got.SubPackages, []string{"cmd/nix-hive"}) ||
		got.DoCheck || !slices.Contains(got.Inputs, "installShellFiles") ||
		!slices.Contains(got.Ldflags, "-X main.version="+got.Version) {
		t.Errorf("unexpected package: %+v", got)
	}
	if got.Cross != "" {
		t.Errorf("a cross build would run the binary it cannot run: postInstall %q", got.Cross)
	}

	// nix-env's own way in: -f with the tarball's URL.
	r := &nixcmd.Runner{}
	out, err := r.Run(context.Background(), "nix-env", "-f", url, "-qa", "--json", "--arg", "pkgs", stub+" (_: true)")
	if err != nil {
		t.Fatal(err)
	}
	var listed map[string]struct{ Pname, Version string }
	if err := json.Unmarshal(out, &listed); err != nil || len(listed) != 1 {
		t.Fatalf("nix-env -qa: %v\n%s", err, out)
	}
	for _, p := range listed {
		if p.Pname != "nix-hive" || p.Version != got.Version {
			t.Errorf("nix-env -f <tarball> -qa lists %+v", p)
		}
	}

	// buildGoModule's build: the source with the vendor directory the
	// hash was taken of, no network, package.nix's flags.
	build := filepath.Join(t.TempDir(), "source")
	outDir := filepath.Join(t.TempDir(), "out")
	run(t, "", nil, "cp", "-R", got.Source, build)
	run(t, "", nil, "chmod", "-R", "u+w", build)
	run(t, "", nil, "cp", "-R", vendor, filepath.Join(build, "vendor"))
	env := []string{"GOFLAGS=-mod=vendor -trimpath", "GOPROXY=off", "GOWORK=off", "GOTOOLCHAIN=local"}
	for _, p := range got.SubPackages {
		run(t, build, env, "go", "build", "-ldflags="+strings.Join(got.Ldflags, " "), "-o", filepath.Join(outDir, "bin")+"/", "./"+p)
	}
	bin := filepath.Join(outDir, "bin", "nix-hive")
	if v := run(t, "", nil, bin, "--version"); !strings.HasPrefix(v, "nix-hive "+got.Version) {
		t.Errorf("built nix-hive --version: %q, want %s", v, got.Version)
	}

	// postInstall, as stdenv runs it: bash, -eu -o pipefail, in the source.
	run(t, build, []string{"out=" + outDir}, "bash", "-c", "set -eu -o pipefail\n"+installHooks+got.PostInstall)
	page, err := os.ReadFile(filepath.Join(outDir, "share/man/man1/nix-hive.1"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(page), `.TH "NIX\-HIVE" "1" "" "nix\-hive `+got.Version+`"`) || !strings.Contains(string(page), `.SH "COMMANDS"`) {
		t.Errorf("installed man page is not nix-hive's:\n%.300s", page)
	}
	for _, f := range []string{"bash-completion/completions/nix-hive.bash", "zsh/site-functions/_nix-hive", "fish/vendor_completions.d/nix-hive.fish"} {
		data, err := os.ReadFile(filepath.Join(outDir, "share", f))
		if err != nil || !strings.Contains(string(data), "nix-hive") {
			t.Errorf("completion %s not installed: %v\n%.200s", f, err, data)
		}
	}
}

func diff(want, got []string) []string {
	var missing []string
	for _, f := range want {
		if !slices.Contains(got, f) {
			missing = append(missing, f)
		}
	}
	return missing
}

// run runs a command (in dir, with env added) and returns its stdout.
func run(t *testing.T, dir string, env []string, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String()
}

// mkDevShell gives a hive's repository a shell with nix-hive on PATH and
// NIX_HIVE_CONFIG naming the hive in the working tree the shell is
// entered from, whichever way the hive is given. The shell's hook runs in
// bash here, as nix develop runs it, and nix-hive itself then finds the
// hive through the variable and writes its files into the working tree.
func TestMkDevShell(t *testing.T) {
	nixtest.Require(t)
	lib := nixtest.NixpkgsLib(t)
	root, _ := filepath.Abs("../..")

	// The variable must be the one nix-hive reads for -c/--config.
	field, _ := reflect.TypeFor[cli.Globals]().FieldByName("Config")
	if env := field.Tag.Get("env"); env != "NIX_HIVE_CONFIG" {
		t.Fatalf("-c/--config reads %q from the environment, mkDevShell sets NIX_HIVE_CONFIG", env)
	}

	repo := filepath.Join(t.TempDir(), "repo")
	hiveDir := filepath.Join(repo, "deploy")
	sub := filepath.Join(hiveDir, "sub")
	if err := os.MkdirAll(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, content := range map[string]string{
		filepath.Join(repo, "flake.nix"):   "{ outputs = _: { }; }\n",
		filepath.Join(hiveDir, "hive.nix"): `{ systems.web.toplevel = null; instances.web-1 = { system = "web"; host = "127.77.0.1"; }; }` + "\n",
	} {
		if err := os.WriteFile(name, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	type shell struct {
		Packages  []string `json:"packages"`
		ShellHook string   `json:"shellHook"`
		MadeBy    string   `json:"madeBy"`
		Name      string   `json:"name"`
	}
	var got struct {
		Package string           `json:"package"`
		Shells  map[string]shell `json:"shells"`
	}
	nixEvalJSON(t, `
let
  nixpkgs = `+stubNixpkgs(lib)+`;
  flake = (import `+root+`/flake.nix).outputs { self = flake; inherit nixpkgs; };
  pkgs = `+stubPkgs(lib)+` (_: true);
  # A flake's self and its paths are copies in the store.
  self = { outPath = builtins.path { path = `+repo+`; name = "source"; }; };
  mk = flake.lib.mkDevShell;
  shells = {
    self = mk { hive = self; inherit pkgs; name = "hive"; packages = [ pkgs.openssh ]; shellHook = "export MORE=1"; };
    storePath = mk { hive = self.outPath + "/deploy"; inherit pkgs; };
    relative = mk { hive = "deploy"; system = "x86_64-linux"; };
    absolute = mk { hive = `+hiveDir+`; inherit pkgs; };
  };
in {
  package = (pkgs.callPackage `+root+`/package.nix { }).name;
  shells = builtins.mapAttrs (_: s: {
    packages = map (p: p.name) s.packages;
    inherit (s) shellHook madeBy;
    name = s.name or "";
  }) shells;
}`, &got)

	if got.Package != "nix-hive-0.1.0" {
		t.Fatalf("package.nix makes %q", got.Package)
	}
	want := map[string]string{"self": repo, "storePath": hiveDir, "relative": hiveDir, "absolute": hiveDir}
	for name, s := range got.Shells {
		if s.MadeBy != "mkShell" || len(s.Packages) == 0 || s.Packages[0] != got.Package {
			t.Errorf("%s: not a mkShell with nix-hive: %+v", name, s)
		}
		if !strings.Contains(s.ShellHook, "export NIX_HIVE_CONFIG=") {
			t.Errorf("%s: shellHook exports no NIX_HIVE_CONFIG:\n%s", name, s.ShellHook)
		}
		// Entered from a directory below the hive, as nix develop may be.
		if v := run(t, sub, nil, "bash", "-c", s.ShellHook+"\nprintf %s \"$NIX_HIVE_CONFIG\""); v != want[name] {
			t.Errorf("%s: NIX_HIVE_CONFIG=%q in the shell, want %s", name, v, want[name])
		}
	}
	if len(got.Shells) != len(want) {
		t.Fatalf("shells: %v", got.Shells)
	}
	self := got.Shells["self"]
	if self.Name != "hive" || !slices.Equal(self.Packages, []string{got.Package, "openssh"}) || !strings.HasSuffix(self.ShellHook, "export MORE=1") {
		t.Errorf("mkShell's own arguments are not passed on: %+v", self)
	}

	// Outside any working tree of the hive the shell falls back to the
	// store copy, and says so.
	cmd := exec.Command("bash", "-c", self.ShellHook+"\nprintf %s \"$NIX_HIVE_CONFIG\"")
	cmd.Dir = t.TempDir()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil || !strings.HasPrefix(string(out), "/nix/store/") || !strings.Contains(stderr.String(), "no working tree of the hive") {
		t.Errorf("outside the working tree: %v, NIX_HIVE_CONFIG=%q, stderr %q", err, out, stderr.String())
	}

	// nix-hive, run from elsewhere in the shell, finds the hive and keeps
	// its files beside it in the working tree.
	v := run(t, sub, nil, "bash", "-c", got.Shells["storePath"].ShellHook+"\nprintf %s \"$NIX_HIVE_CONFIG\"")
	t.Setenv("NIX_HIVE_CONFIG", v)
	t.Chdir(t.TempDir())
	var stdout, errOut bytes.Buffer
	if code := cli.Main("test", []string{"ssh-config", "--write"}, &stdout, &errOut); code != 0 {
		t.Fatalf("nix-hive ssh-config --write in the shell: exit %d\n%s", code, errOut.String())
	}
	written := strings.TrimSpace(stdout.String())
	if written != filepath.Join(hiveDir, ".nix-hive", "ssh_config") {
		t.Errorf("nix-hive wrote %s, not beside the hive in the working tree", written)
	}
	if _, err := os.Stat(written); err != nil {
		t.Error(err)
	}
}
