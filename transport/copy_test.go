package transport

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestSplitTarget(t *testing.T) {
	tests := []struct{ in, inst, path string }{
		{"www-1:/etc/hosts", "www-1", "/etc/hosts"},
		{"www-1:", "www-1", "."},
		{"www-1:rel/x", "www-1", "rel/x"},
		{"/local/file", "", "/local/file"},
		{"./a:b", "", "./a:b"},
		{"dir/a:b", "", "dir/a:b"},
		{":x", "", ":x"},
		{"plain", "", "plain"},
	}
	for _, tt := range tests {
		if inst, p := SplitTarget(tt.in); inst != tt.inst || p != tt.path {
			t.Errorf("SplitTarget(%q) = %q, %q; want %q, %q", tt.in, inst, p, tt.inst, tt.path)
		}
	}
}

// The in-process server's sftp works on this machine's file system, so
// "remote" paths here are temporary directories too.
func TestCopyInProcess(t *testing.T) {
	p, _, ctx := onePool(t)

	src := t.TempDir()
	writeFile(t, filepath.Join(src, "tree", "sub", "f"), "hello")
	writeFile(t, filepath.Join(src, "tree", "x.sh"), "#!/bin/sh\n")
	if err := os.Chmod(filepath.Join(src, "tree", "x.sh"), 0o751); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("sub/f", filepath.Join(src, "tree", "l")); err != nil {
		t.Fatal(err)
	}
	remote := t.TempDir()

	t.Run("file to a new name, then into a directory", func(t *testing.T) {
		if err := p.Copy(ctx, filepath.Join(src, "tree", "x.sh"), "a:"+remote+"/renamed", false, nil); err != nil {
			t.Fatal(err)
		}
		if err := p.Copy(ctx, filepath.Join(src, "tree", "x.sh"), "a:"+remote, false, nil); err != nil {
			t.Fatal(err)
		}
		for _, n := range []string{"renamed", "x.sh"} {
			st, err := os.Stat(filepath.Join(remote, n))
			if err != nil || st.Mode().Perm() != 0o751 {
				t.Errorf("%s: %v %v; want mode 0751", n, st, err)
			}
		}
	})

	t.Run("tree round trip", func(t *testing.T) {
		if err := p.Copy(ctx, filepath.Join(src, "tree"), "a:"+remote+"/copy", true, nil); err != nil {
			t.Fatal(err)
		}
		compareTrees(t, filepath.Join(src, "tree"), filepath.Join(remote, "copy"))
		back := t.TempDir()
		if err := p.Copy(ctx, "a:"+remote+"/copy/", back, true, nil); err != nil {
			t.Fatal(err)
		}
		compareTrees(t, filepath.Join(src, "tree"), filepath.Join(back, "copy"))
	})

	t.Run("cancelled upload leaves nothing", func(t *testing.T) {
		big := writeFile(t, filepath.Join(t.TempDir(), "big"), strings.Repeat("x", 8<<20))
		cctx, cancel := context.WithCancel(ctx)
		defer cancel()
		err := p.Copy(cctx, big, "a:"+remote+"/big", false, func(done, total int64) {
			if done > 0 {
				cancel()
			}
		})
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Copy = %v; want context.Canceled", err)
		}
		entries, _ := os.ReadDir(remote)
		for _, e := range entries {
			if strings.Contains(e.Name(), "big") {
				t.Errorf("%s left behind by a cancelled upload", e.Name())
			}
		}
	})

	t.Run("bad arguments", func(t *testing.T) {
		for _, c := range [][2]string{{"/x", "/y"}, {"a:/x", "a:/y"}} {
			if err := p.Copy(ctx, c[0], c[1], false, nil); err == nil {
				t.Errorf("Copy(%s, %s) succeeded", c[0], c[1])
			}
		}
		if err := p.Copy(ctx, "/x", "nope:/y", false, nil); !errors.Is(err, ErrUnknownInstance) {
			t.Errorf("Copy to an unknown instance = %v; want ErrUnknownInstance", err)
		}
	})
	if d := p.Dials("a"); d != 1 {
		t.Errorf("Dials = %d; want 1", d)
	}
}
