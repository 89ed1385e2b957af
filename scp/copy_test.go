package scp

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pkg/sftp"

	"github.com/nix-hive/nix-hive/transport"
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

// memPool is a Pool of in-memory sftp servers: their "remote" file
// system is this machine's, so remote paths are temporary directories too.
type memPool map[string]*transport.SFTP

func (p memPool) SFTP(_ context.Context, name string) (*transport.SFTP, error) {
	c, ok := p[name]
	if !ok {
		return nil, fmt.Errorf("%w %q", transport.ErrUnknownInstance, name)
	}
	return c, nil
}

func serveSFTP(t *testing.T) *transport.SFTP {
	t.Helper()
	cr, sw := io.Pipe()
	sr, cw := io.Pipe()
	srv, err := sftp.NewServer(struct {
		io.Reader
		io.WriteCloser
	}{sr, sw})
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve()
	c, err := transport.NewSFTP(cr, cw)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sw.Close(); cw.Close(); c.Close() })
	return c
}

func testCtx(t *testing.T) context.Context {
	// Generous: only a hang would hit it, and a hang is the failure.
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func writeFile(t *testing.T, path, content string) string {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestCopyInProcess(t *testing.T) {
	p, ctx := memPool{"a": serveSFTP(t)}, testCtx(t)

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
		if err := Copy(ctx, p, filepath.Join(src, "tree", "x.sh"), "a:"+remote+"/renamed", false, nil); err != nil {
			t.Fatal(err)
		}
		if err := Copy(ctx, p, filepath.Join(src, "tree", "x.sh"), "a:"+remote, false, nil); err != nil {
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
		if err := Copy(ctx, p, filepath.Join(src, "tree"), "a:"+remote+"/copy", true, nil); err != nil {
			t.Fatal(err)
		}
		compareTrees(t, filepath.Join(src, "tree"), filepath.Join(remote, "copy"))
		back := t.TempDir()
		if err := Copy(ctx, p, "a:"+remote+"/copy/", back, true, nil); err != nil {
			t.Fatal(err)
		}
		compareTrees(t, filepath.Join(src, "tree"), filepath.Join(back, "copy"))
	})

	t.Run("cancelled upload leaves nothing", func(t *testing.T) {
		big := writeFile(t, filepath.Join(t.TempDir(), "big"), strings.Repeat("x", 8<<20))
		cctx, cancel := context.WithCancel(ctx)
		defer cancel()
		err := Copy(cctx, p, big, "a:"+remote+"/big", false, func(done, total int64) {
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
			if err := Copy(ctx, p, c[0], c[1], false, nil); err == nil {
				t.Errorf("Copy(%s, %s) succeeded", c[0], c[1])
			}
		}
		if err := Copy(ctx, p, "/x", "nope:/y", false, nil); !errors.Is(err, transport.ErrUnknownInstance) {
			t.Errorf("Copy to an unknown instance = %v; want ErrUnknownInstance", err)
		}
	})
}
