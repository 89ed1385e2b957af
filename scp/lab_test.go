package scp

import (
	"bytes"
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nix-hive/nix-hive/lab"
	"github.com/nix-hive/nix-hive/lab/labtest"
	"github.com/nix-hive/nix-hive/mux"
	"github.com/nix-hive/nix-hive/transport"
)

// TestLab copies trees to and from real sshd hosts: the jump host over a
// pool's own connection, and a host behind it through a holder (package
// mux), whose relayed sftp session carries the pipelined writes.
func TestLab(t *testing.T) {
	hermetic(t)
	l := labtest.New(t, lab.Config{Internal: 1})
	ctx := testCtx(t)
	var jump, internal *lab.Host
	for _, h := range l.Hosts {
		if h.Jump == "" {
			jump = h
		} else {
			internal = h
		}
	}
	cfg := labConfig(t, l)

	t.Run("direct", func(t *testing.T) {
		p := newPool(t, cfg)
		testCopyTree(t, ctx, p, jump)
		if d := p.Stats().Dials[jump.Name]; d != 1 {
			t.Errorf("Dials(%s) = %d; want 1: copies share the pooled connection", jump.Name, d)
		}
	})

	t.Run("through a holder", func(t *testing.T) {
		c := cfg
		c.Holder = startHolder(t, cfg)
		testCopyTree(t, ctx, newPool(t, c), internal)
	})
}

// hermetic keeps the user's real agent, keys and configs out of a test.
func hermetic(t *testing.T) {
	t.Setenv("HOME", t.TempDir())
	t.Setenv("SSH_AUTH_SOCK", "")
}

// labConfig is the lab's endpoints, pinned, and nothing of the user's.
func labConfig(t *testing.T, l *lab.Lab) transport.Config {
	eps := map[string]transport.Endpoint{}
	for _, h := range l.Hosts {
		eps[h.Name] = transport.Endpoint{Name: h.Name, Host: h.Addr, Port: h.Port, User: "root", Jump: h.Jump,
			HostKeys: []string{h.HostKey}, Options: map[string]string{"IdentityFile": l.ClientKey}}
	}
	return transport.Config{Endpoints: eps, UserConfig: "none", KnownHostsFiles: []string{},
		AcceptedKnownHosts: filepath.Join(t.TempDir(), "accepted")}
}

func newPool(t *testing.T, cfg transport.Config) *transport.Pool {
	t.Helper()
	p, err := transport.NewPool(cfg)
	if err != nil {
		t.Fatalf("NewPool: %v", err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// startHolder serves cfg's connections from a holder in this process
// until the test ends, and returns the way to it.
func startHolder(t *testing.T, cfg transport.Config) transport.Holder {
	t.Helper()
	t.Setenv("XDG_RUNTIME_DIR", t.TempDir())
	if _, err := mux.Dir(true); err != nil {
		t.Fatal(err)
	}
	sock, err := mux.Socket(cfg)
	if err != nil {
		t.Fatal(err)
	}
	s, err := mux.NewServer(cfg, 0, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := s.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	ended := make(chan struct{})
	go func() {
		defer close(ended)
		if err := s.Serve(context.Background(), ln); err != nil {
			t.Errorf("Serve: %v", err)
		}
	}()
	t.Cleanup(func() {
		s.Stop()
		<-ended
	})
	m, err := mux.Dial(sock, 0)
	if err != nil {
		t.Fatalf("the holder does not answer: %v", err)
	}
	return m
}

// testCopyTree uploads a tree with assorted modes, a symlink, a read-only
// directory and a multi-MiB file, checks it on the host, downloads it back
// and compares.
func testCopyTree(t *testing.T, ctx context.Context, p *transport.Pool, h *lab.Host) {
	src := filepath.Join(t.TempDir(), "tree")
	files := []struct {
		path string
		mode fs.FileMode
		data string
	}{
		{"", 0o750 | fs.ModeDir, ""},
		{"bin", 0o755 | fs.ModeDir, ""},
		{"bin/run", 0o755, "#!/bin/sh\necho hi\n"},
		{"secret", 0o600, "s3cret"},
		{"with space's", 0o644, "x"},
		{"big", 0o644, strings.Repeat("0123456789abcdef", 3<<16)}, // 3 MiB
		{"ro", 0o555 | fs.ModeDir, ""},
		{"ro/inside", 0o444, "read only"},
		{"empty", 0o640, ""},
	}
	var total int64
	for _, f := range files {
		p := filepath.Join(src, f.path)
		if f.mode.IsDir() {
			if err := os.MkdirAll(p, 0o700); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.WriteFile(p, []byte(f.data), 0o600); err != nil {
			t.Fatal(err)
		}
		total += int64(len(f.data))
	}
	if err := os.Symlink("bin/run", filepath.Join(src, "link")); err != nil {
		t.Fatal(err)
	}
	// Modes last, deepest first, so the read-only directory can be filled.
	for i := len(files) - 1; i >= 0; i-- {
		if err := os.Chmod(filepath.Join(src, files[i].path), files[i].mode.Perm()); err != nil {
			t.Fatal(err)
		}
	}

	c, err := p.SFTP(ctx, h.Name)
	if err != nil {
		t.Fatal(err)
	}
	if c2, _ := p.SFTP(ctx, h.Name); c2 != c {
		t.Errorf("SFTP returned a new client for the same host")
	}
	var last, calls int64
	progress := func(done, tot int64) {
		if done < last || tot != total {
			t.Errorf("progress(%d, %d) after %d; total should be %d", done, tot, last, total)
		}
		last = done
		calls++
	}
	if _, _, _, err := p.Output(ctx, h.Name, "mkdir -p /root/dst"); err != nil {
		t.Fatal(err)
	}
	if err := Copy(ctx, p, src, h.Name+":/root/dst", true, progress); err != nil {
		t.Fatalf("upload: %v", err)
	}
	if last != total || calls < 3 {
		t.Errorf("progress ended at %d of %d after %d calls", last, total, calls)
	}
	// Into the existing directory, as cp does; no temporary files left.
	out, err := h.Exec(ctx, "sh", "-c", "cd /root/dst && find . | sort | while read -r f; do stat -c '%A %n' \"$f\"; done")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"drwxr-xr-x ./tree/bin", "-rwxr-xr-x ./tree/bin/run", "-rw------- ./tree/secret",
		"-rw-r--r-- ./tree/with space's", "dr-xr-xr-x ./tree/ro", "-r--r--r-- ./tree/ro/inside",
		"lrwxrwxrwx ./tree/link", "-rw-r----- ./tree/empty", "drwxr-x--- ./tree",
	}
	for _, w := range want {
		if !strings.Contains(string(out), w+"\n") {
			t.Errorf("remote tree lacks %q:\n%s", w, out)
		}
	}
	if dest, err := os.Readlink(h.Path("/root/dst/tree/link")); err != nil || dest != "bin/run" {
		t.Errorf("remote symlink points to %q (%v); want bin/run", dest, err)
	}
	if strings.Contains(string(out), ".nix-hive-") {
		t.Errorf("temporary files left behind:\n%s", out)
	}
	if got, err := os.ReadFile(h.Path("/root/dst/tree/big")); err != nil || string(got) != files[5].data {
		t.Errorf("big file differs on the host (%v)", err)
	}

	back := t.TempDir()
	if err := Copy(ctx, p, h.Name+":/root/dst/tree", back, true, nil); err != nil {
		t.Fatalf("download: %v", err)
	}
	compareTrees(t, src, filepath.Join(back, "tree"))

	// A single file replaces its target atomically and keeps its mode.
	if err := Copy(ctx, p, filepath.Join(src, "secret"), h.Name+":/root/dst/tree/empty", false, nil); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(h.Path("/root/dst/tree/empty")); err != nil || st.Mode().Perm() != 0o600 || st.Size() != 6 {
		t.Errorf("replaced file: %v %v", st, err)
	}
	if err := Copy(ctx, p, src, h.Name+":/root/x", false, nil); err == nil || !strings.Contains(err.Error(), "is a directory") {
		t.Errorf("non-recursive copy of a directory: %v", err)
	}
}

func compareTrees(t *testing.T, a, b string) {
	t.Helper()
	err := filepath.WalkDir(a, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(a, p)
		q := filepath.Join(b, rel)
		sa, err := os.Lstat(p)
		if err != nil {
			return err
		}
		sb, err := os.Lstat(q)
		if err != nil {
			t.Errorf("%s missing after the round trip", rel)
			return nil
		}
		if sa.Mode() != sb.Mode() {
			t.Errorf("%s: mode %v, was %v", rel, sb.Mode(), sa.Mode())
		}
		switch {
		case sa.Mode()&fs.ModeSymlink != 0:
			la, _ := os.Readlink(p)
			lb, _ := os.Readlink(q)
			if la != lb {
				t.Errorf("%s: link to %q, was %q", rel, lb, la)
			}
		case sa.Mode().IsRegular():
			da, _ := os.ReadFile(p)
			db, _ := os.ReadFile(q)
			if !bytes.Equal(da, db) {
				t.Errorf("%s: content differs", rel)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
