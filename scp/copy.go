package scp

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/nix-hive/nix-hive/transport"
)

// modeBits are the mode bits a copy preserves.
const modeBits = fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky

// SplitTarget splits an scp-style argument: "instance:path" is remote (an
// empty path means the login directory), anything else is local. As with
// scp, a colon after a slash does not count, so "./a:b" is a local file.
func SplitTarget(arg string) (instance, p string) {
	i := strings.IndexByte(arg, ':')
	if i <= 0 || strings.Contains(arg[:i], "/") {
		return "", arg
	}
	p = arg[i+1:]
	if p == "" {
		p = "."
	}
	return arg[:i], p
}

// Pool is what a copy needs of a transport.Pool: an instance's sftp
// client, which the pool owns.
type Pool interface {
	SFTP(ctx context.Context, name string) (*transport.SFTP, error)
}

// Copy copies between this machine and an instance; src and dst are
// scp-style (see SplitTarget) and exactly one of them must be remote. It
// uses the instance's pooled sftp client; see Upload and Download for the
// rest of the semantics.
func Copy(ctx context.Context, p Pool, src, dst string, recursive bool, progress func(done, total int64)) error {
	si, sp := SplitTarget(src)
	di, dp := SplitTarget(dst)
	switch {
	case si == "" && di == "":
		return fmt.Errorf("copy %s to %s: neither side is an instance (write instance:path)", src, dst)
	case si != "" && di != "":
		return fmt.Errorf("copy %s to %s: copying between two instances is not supported; copy through a local directory", src, dst)
	case si != "":
		c, err := p.SFTP(ctx, si)
		if err != nil {
			return err
		}
		if err := Download(ctx, c, sp, dp, recursive, progress); err != nil {
			return fmt.Errorf("copy from %s: %w", si, err)
		}
		return nil
	default:
		c, err := p.SFTP(ctx, di)
		if err != nil {
			return err
		}
		if err := Upload(ctx, c, sp, dp, recursive, progress); err != nil {
			return fmt.Errorf("copy to %s: %w", di, err)
		}
		return nil
	}
}

// Upload copies the local file or directory (recursive must be set for a
// directory) to remote, like cp: into remote/<base> when remote is an
// existing directory, else to remote itself. Modes are preserved and
// symlinks are copied as symlinks. Each file is written under a temporary
// name beside its target and renamed over it once complete, so readers
// never see a partial file. progress, if set, gets the bytes copied so far
// and the total of all files, starting with (0, total).
func Upload(ctx context.Context, c *transport.SFTP, local, remote string, recursive bool, progress func(done, total int64)) error {
	if err := copyTree(ctx, localFS{}, remoteFS{c}, local, remote, recursive, progress); err != nil {
		return fmt.Errorf("upload %s: %w", local, err)
	}
	return nil
}

// Download copies the remote file or directory (recursive must be set for a
// directory) to local, with the same rules as Upload (into local/<base>
// when local is an existing directory, modes and symlinks preserved,
// temporary name then rename, progress over all files).
func Download(ctx context.Context, c *transport.SFTP, remote, local string, recursive bool, progress func(done, total int64)) error {
	if err := copyTree(ctx, remoteFS{c}, localFS{}, remote, local, recursive, progress); err != nil {
		return fmt.Errorf("download %s: %w", remote, err)
	}
	return nil
}

// copyTree copies from (a file or, when recursive, a directory) on src to
// to on dst.
func copyTree(ctx context.Context, src, dst side, from, to string, recursive bool, progress func(done, total int64)) error {
	if from == "" {
		from = "."
	}
	if to == "" {
		to = "."
	}
	st, err := src.Stat(from)
	if err != nil {
		return err
	}
	if st.IsDir() && !recursive {
		return errors.New("is a directory (copy it recursively)")
	}
	target := to
	if ts, err := dst.Stat(to); err == nil && ts.IsDir() {
		target = dst.Join(to, src.Base(from))
	}
	total, err := treeSize(src, from)
	if err != nil {
		return err
	}
	pr := newProgress(ctx, total, progress)
	if !st.IsDir() {
		if err := copyFile(src, dst, from, target, st.Mode(), pr); err != nil {
			return fmt.Errorf("to %s: %w", target, err)
		}
		return nil
	}
	// Directories are made writable first and get their own mode at the
	// end, deepest first, so a read-only directory can still be filled.
	var dirs []dirMode
	err = src.Walk(from, func(rel string, info fs.FileInfo) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		d, err := copyEntry(src, dst, src.Join(from, rel), dst.Join(target, rel), info, pr)
		if d != nil {
			dirs = append(dirs, *d)
		}
		return err
	})
	if err != nil {
		return err
	}
	for i := len(dirs) - 1; i >= 0; i-- {
		if err := dst.Chmod(dirs[i].path, dirs[i].mode&modeBits); err != nil {
			return fmt.Errorf("chmod %s: %w", dirs[i].path, err)
		}
	}
	return nil
}

type dirMode struct {
	path string
	mode fs.FileMode
}

// copyEntry copies one walked entry; a directory is returned for its mode
// to be set at the end.
func copyEntry(src, dst side, sp, dp string, info fs.FileInfo, pr *progress) (*dirMode, error) {
	switch {
	case info.IsDir():
		if err := dst.Mkdir(dp); err != nil {
			// Lstat: an existing symbolic link is not followed, so
			// nothing outside the destination is written or chmodded.
			st, serr := dst.Lstat(dp)
			if serr == nil && st.Mode()&fs.ModeSymlink != 0 {
				return nil, fmt.Errorf("%s is a symbolic link; refusing to copy a directory through it", dp)
			}
			if serr != nil || !st.IsDir() {
				return nil, fmt.Errorf("mkdir %s: %w", dp, err)
			}
		}
		if err := dst.Chmod(dp, 0o700); err != nil {
			return nil, fmt.Errorf("chmod %s: %w", dp, err)
		}
		return &dirMode{dp, info.Mode()}, nil
	case info.Mode()&fs.ModeSymlink != 0:
		link, err := src.Readlink(sp)
		if err != nil {
			return nil, fmt.Errorf("readlink %s: %w", sp, err)
		}
		_ = dst.Remove(dp)
		if err := dst.Symlink(link, dp); err != nil {
			return nil, fmt.Errorf("symlink %s: %w", dp, err)
		}
	case info.Mode().IsRegular():
		if err := copyFile(src, dst, sp, dp, info.Mode(), pr); err != nil {
			return nil, fmt.Errorf("%s to %s: %w", sp, dp, err)
		}
	default:
		return nil, fmt.Errorf("%s: cannot copy a %s", sp, info.Mode().Type())
	}
	return nil, nil
}

// copyFile writes to a temporary file that only this user can read (never
// world-readable, whatever the umask) and renames it over to once
// complete, with its mode; on failure or interruption the temporary file
// is removed.
func copyFile(src, dst side, from, to string, mode fs.FileMode, pr *progress) error {
	in, size, err := src.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := dst.CreateTemp(to, mode&modeBits)
	if err != nil {
		return err
	}
	if err := pump(out, in, size, pr); err != nil {
		out.Discard()
		return err
	}
	return out.Commit(mode & modeBits)
}

// pump copies in to out, counting: sftp is fast only when it may pipeline,
// writing through ReadFrom (with the size known) or reading through
// WriteTo.
func pump(out io.Writer, in io.Reader, size int64, pr *progress) error {
	if rf, ok := out.(io.ReaderFrom); ok {
		_, err := rf.ReadFrom(pr.reader(in, size))
		return err
	}
	if wt, ok := in.(io.WriterTo); ok {
		_, err := wt.WriteTo(pr.writer(out))
		return err
	}
	_, err := io.Copy(pr.writer(out), in)
	return err
}

// side is one end of a copy: this machine or an instance over sftp.
type side interface {
	Stat(p string) (fs.FileInfo, error)
	// Walk calls fn for root and everything below it, with paths relative
	// to root ("" for root itself) in the side's own syntax.
	Walk(root string, fn func(rel string, info fs.FileInfo) error) error
	Mkdir(p string) error
	Chmod(p string, mode fs.FileMode) error
	Readlink(p string) (string, error)
	Symlink(target, p string) error
	Remove(p string) error
	Open(p string) (io.ReadCloser, int64, error)
	// Lstat does not follow a final symbolic link.
	Lstat(p string) (fs.FileInfo, error)
	// CreateTemp creates a file, with mode's owner bits only from the
	// moment it exists, that Commit moves to p.
	CreateTemp(p string, mode fs.FileMode) (tempFile, error)
	Join(dir, rel string) string
	Base(p string) string
}

type localFS struct{}

func (localFS) Stat(p string) (fs.FileInfo, error)  { return os.Stat(p) }
func (localFS) Lstat(p string) (fs.FileInfo, error) { return os.Lstat(p) }
func (localFS) Mkdir(p string) error                { return os.Mkdir(p, 0o700) }
func (localFS) Chmod(p string, m fs.FileMode) error { return os.Chmod(p, m) }
func (localFS) Readlink(p string) (string, error)   { return os.Readlink(p) }
func (localFS) Symlink(target, p string) error      { return os.Symlink(target, p) }
func (localFS) Remove(p string) error               { return os.Remove(p) }
func (localFS) Base(p string) string                { return filepath.Base(p) }
func (localFS) Join(dir, rel string) string         { return filepath.Join(dir, filepath.FromSlash(rel)) }

func (localFS) Walk(root string, fn func(string, fs.FileInfo) error) error {
	return filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		if rel == "." {
			rel = ""
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		return fn(filepath.ToSlash(rel), info)
	})
}

func (localFS) Open(p string) (io.ReadCloser, int64, error) { return sized(os.Open(p)) }

// sized returns an opened file with its size.
func sized[F interface {
	io.ReadCloser
	Stat() (fs.FileInfo, error)
}](f F, err error) (io.ReadCloser, int64, error) {
	if err != nil {
		return nil, 0, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, err
	}
	return f, st.Size(), nil
}

// tempFile is a file being written for its destination.
type tempFile interface {
	io.Writer
	// Commit gives the file mode and renames it over its destination.
	Commit(mode fs.FileMode) error
	// Discard removes it.
	Discard()
}

func (localFS) CreateTemp(p string, _ fs.FileMode) (tempFile, error) {
	// os.CreateTemp makes the file 0600.
	f, err := os.CreateTemp(filepath.Dir(p), "."+filepath.Base(p)+".nix-hive-*")
	if err != nil {
		return nil, err
	}
	return &localTemp{File: f, dest: p}, nil
}

type localTemp struct {
	*os.File
	dest string
}

func (t *localTemp) Commit(mode fs.FileMode) error {
	if err := t.Chmod(mode); err != nil {
		t.Discard()
		return fmt.Errorf("chmod %s: %w", t.Name(), err)
	}
	if err := t.Close(); err != nil {
		t.Discard()
		return fmt.Errorf("close %s: %w", t.Name(), err)
	}
	if err := os.Rename(t.Name(), t.dest); err != nil {
		t.Discard()
		return fmt.Errorf("rename %s to %s: %w", t.Name(), t.dest, err)
	}
	return nil
}

func (t *localTemp) Discard() {
	t.Close()
	os.Remove(t.Name())
}

type remoteFS struct{ c *transport.SFTP }

func (r remoteFS) Stat(p string) (fs.FileInfo, error)  { return r.c.Stat(p) }
func (r remoteFS) Lstat(p string) (fs.FileInfo, error) { return r.c.Lstat(p) }
func (r remoteFS) Mkdir(p string) error                { return r.c.MkdirMode(p, 0o700) }
func (r remoteFS) Chmod(p string, m fs.FileMode) error { return r.c.Chmod(p, m) }
func (r remoteFS) Readlink(p string) (string, error)   { return r.c.ReadLink(p) }
func (r remoteFS) Symlink(target, p string) error      { return r.c.Symlink(target, p) }
func (r remoteFS) Remove(p string) error               { return r.c.Remove(p) }
func (r remoteFS) Join(dir, rel string) string         { return path.Join(dir, rel) }

// Base names what "." or "/" stand for.
func (r remoteFS) Base(p string) string {
	base := path.Base(p)
	if base == "." || base == "/" {
		if real, err := r.c.RealPath(p); err == nil {
			base = path.Base(real)
		}
	}
	return base
}

func (r remoteFS) Walk(root string, fn func(string, fs.FileInfo) error) error {
	w := r.c.Walk(root)
	for w.Step() {
		if err := w.Err(); err != nil {
			return err
		}
		if err := fn(remoteRel(root, w.Path()), w.Stat()); err != nil {
			return err
		}
	}
	return nil
}

func (r remoteFS) Open(p string) (io.ReadCloser, int64, error) { return sized(r.c.Open(p)) }

func (r remoteFS) CreateTemp(p string, mode fs.FileMode) (tempFile, error) {
	t, err := transport.CreatePrivate(r.c, p, mode)
	if err != nil {
		return nil, err
	}
	return t, nil
}

// remoteRel is p relative to the walk's root (the walker joins, and so
// cleans, the paths below the root).
func remoteRel(root, p string) string {
	root, p = path.Clean(root), path.Clean(p)
	switch {
	case p == root:
		return ""
	case root == ".":
		return p
	case root == "/":
		return strings.TrimPrefix(p, "/")
	}
	return strings.TrimPrefix(p, root+"/")
}

// treeSize is the size of the regular files at and below root.
func treeSize(s side, root string) (int64, error) {
	var n int64
	err := s.Walk(root, func(_ string, info fs.FileInfo) error {
		if info.Mode().IsRegular() {
			n += info.Size()
		}
		return nil
	})
	return n, err
}

// progress counts bytes over a whole copy and stops it when ctx ends.
type progress struct {
	ctx         context.Context
	done, total int64
	fn          func(done, total int64)
}

func newProgress(ctx context.Context, total int64, fn func(done, total int64)) *progress {
	p := &progress{ctx: ctx, total: total, fn: fn}
	if fn != nil {
		fn(0, total)
	}
	return p
}

func (p *progress) add(n int) {
	p.done += int64(n)
	if p.fn != nil && n > 0 {
		p.fn(p.done, p.total)
	}
}

func (p *progress) reader(r io.Reader, size int64) io.Reader {
	return &countingReader{r: r, p: p, size: size}
}

func (p *progress) writer(w io.Writer) io.Writer { return &countingWriter{w: w, p: p} }

type countingReader struct {
	r    io.Reader
	p    *progress
	size int64
}

// Size lets sftp's ReadFrom pipeline writes.
func (c *countingReader) Size() int64 { return c.size }

func (c *countingReader) Read(b []byte) (int, error) {
	if err := c.p.ctx.Err(); err != nil {
		return 0, err
	}
	n, err := c.r.Read(b)
	c.p.add(n)
	return n, err
}

type countingWriter struct {
	w io.Writer
	p *progress
}

func (c *countingWriter) Write(b []byte) (int, error) {
	if err := c.p.ctx.Err(); err != nil {
		return 0, err
	}
	n, err := c.w.Write(b)
	c.p.add(n)
	return n, err
}
