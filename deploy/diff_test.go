package deploy

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/nix-hive/nix-hive/internal/nixtest"
	"github.com/nix-hive/nix-hive/nixcmd"
)

func TestSplitName(t *testing.T) {
	for _, c := range []struct{ path, name, version string }{
		{"/nix/store/36lbf1afx03dvwjifp8gidqczy2s16ya-hello-2.12", "hello", "2.12"},
		{"/nix/store/36lbf1afx03dvwjifp8gidqczy2s16ya-nixos-system-web-1", "nixos-system-web", "1"},
		{"/nix/store/36lbf1afx03dvwjifp8gidqczy2s16ya-etc", "etc", ""},
		{"/nix/store/36lbf1afx03dvwjifp8gidqczy2s16ya-openssl-3.0.13-bin", "openssl", "3.0.13"},
		{"/nix/store/36lbf1afx03dvwjifp8gidqczy2s16ya-systemd-minimal-libs-255.9", "systemd-minimal-libs", "255.9"},
		{"/nix/store/36lbf1afx03dvwjifp8gidqczy2s16ya-unit-sshd.service", "unit-sshd.service", ""},
	} {
		if n, v := splitName(c.path); n != c.name || v != c.version {
			t.Errorf("splitName(%s) = %q, %q; want %q, %q", c.path, n, v, c.name, c.version)
		}
	}
}

func TestDiffClosures(t *testing.T) {
	const h = "/nix/store/00000000000000000000000000000000-"
	old := Closure{h + "hello-2.12": 2000, h + "etc": 100, h + "gone-1": 50000, h + "sys-1": 300}
	new := Closure{h + "hello-2.13": 2100, h + "etc": 100, h + "blob-1.0": 1 << 20, h[:12] + "1" + h[13:] + "sys-1": 300}
	d := DiffClosures(old, new)
	var got []string
	for _, p := range d.Packages {
		got = append(got, p.String())
	}
	want := []string{"blob: ∅ → 1.0, +1.0 MiB", "gone: 1 → ∅, -48.8 KiB", "hello: 2.12 → 2.13"}
	if !slices.Equal(got, want) {
		t.Errorf("packages = %q, want %q", got, want)
	}
	if d.Rebuilt != 1 || d.OldPaths != 4 || d.NewPaths != 4 || d.SizeDelta() != 1<<20+100-50000 {
		t.Errorf("diff = %+v", d)
	}
}

// TestDiffClosuresMatchesNix builds two systems and checks that the diff
// nix-hive shows lists what `nix store diff-closures` lists.
func TestDiffClosuresMatchesNix(t *testing.T) {
	nixtest.Require(t)
	dir := t.TempDir()
	ts, _ := filepath.Abs("../examples/testsystems")
	build := func(file, packages string) string {
		t.Helper()
		expr := fmt.Sprintf("import %s { name = \"diff\"; version = %q; packages = [ %s ]; }", ts, file, packages)
		f := filepath.Join(dir, file+".nix")
		if err := os.WriteFile(f, []byte(expr), 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command("nix-build", "--no-out-link", f).Output()
		if err != nil {
			t.Fatalf("nix-build %s: %v", expr, err)
		}
		return strings.TrimSpace(string(out))
	}
	old := build("1", `{ name = "hello"; version = "2.12"; } { name = "gone"; version = "1"; sizeKiB = 64; }`)
	new := build("2", `{ name = "hello"; version = "2.13"; } { name = "blob"; version = "1.0"; sizeKiB = 1024; }`)
	nix := &nixcmd.Runner{}
	ctx := context.Background()
	oc, ok, err := LocalClosure(ctx, nix, old)
	if err != nil || !ok {
		t.Fatalf("LocalClosure(%s) = %v, %v", old, ok, err)
	}
	nc, _, _ := LocalClosure(ctx, nix, new)
	var got []string
	for _, p := range DiffClosures(oc, nc).Packages {
		got = append(got, p.Name+": "+versions(p.Old)+" → "+versions(p.New))
	}
	out, err := exec.Command("nix", "--extra-experimental-features", "nix-command", "store", "diff-closures", old, new).Output()
	if err != nil {
		t.Fatalf("nix store diff-closures: %v", err)
	}
	var want []string
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		// "name: old → new, +1024.0 KiB": the sizes are Nix's own
		// rounding; the names and versions must agree.
		want = append(want, strings.SplitN(stripANSI(l), ", ", 2)[0])
	}
	if !slices.Equal(got, want) {
		t.Errorf("nix-hive's diff %q, nix store diff-closures %q", got, want)
	}
	if _, ok, _ := LocalClosure(ctx, nix, "/nix/store/00000000000000000000000000000000-absent"); ok {
		t.Errorf("a path not in the store has a closure")
	}
}

func stripANSI(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == 0x1b {
			for i < len(s) && s[i] != 'm' {
				i++
			}
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
