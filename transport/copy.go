package transport

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/pkg/sftp"
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

// Copy copies between this machine and an instance; src and dst are
// scp-style (see SplitTarget) and exactly one of them must be remote. It
// uses the instance's pooled sftp client; see Upload and Download for the
// rest of the semantics.
func (p *Pool) Copy(ctx context.Context, src, dst string, recursive bool, progress func(done, total int64)) error {
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
func Upload(ctx context.Context, c *sftp.Client, local, remote string, recursive bool, progress func(done, total int64)) error {
	st, err := os.Stat(local)
	if err != nil {
		return fmt.Errorf("upload: %w", err)
	}
	if st.IsDir() && !recursive {
		return fmt.Errorf("upload %s: is a directory (copy it recursively)", local)
	}
	if remote == "" {
		remote = "."
	}
	target := remote
	if rst, err := c.Stat(remote); err == nil && rst.IsDir() {
		target = path.Join(remote, filepath.Base(local))
	}
	total, err := localSize(local)
	if err != nil {
		return fmt.Errorf("upload %s: %w", local, err)
	}
	pr := newProgress(ctx, total, progress)
	if !st.IsDir() {
		if err := uploadFile(c, local, target, st.Mode(), pr); err != nil {
			return fmt.Errorf("upload %s to %s: %w", local, target, err)
		}
		return nil
	}
	// Directories are created writable and get their own mode at the end,
	// deepest first, so a read-only directory can still be filled.
	type dirMode struct {
		path string
		mode fs.FileMode
	}
	var dirs []dirMode
	err = filepath.WalkDir(local, func(lp string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		rel, err := filepath.Rel(local, lp)
		if err != nil {
			return err
		}
		rp := path.Join(target, filepath.ToSlash(rel))
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			if err := c.Mkdir(rp); err != nil {
				if rst, serr := c.Stat(rp); serr != nil || !rst.IsDir() {
					return fmt.Errorf("mkdir %s: %w", rp, err)
				}
			}
			if err := c.Chmod(rp, 0o700); err != nil {
				return fmt.Errorf("chmod %s: %w", rp, err)
			}
			dirs = append(dirs, dirMode{rp, info.Mode()})
		case d.Type()&fs.ModeSymlink != 0:
			dest, err := os.Readlink(lp)
			if err != nil {
				return err
			}
			_ = c.Remove(rp)
			if err := c.Symlink(dest, rp); err != nil {
				return fmt.Errorf("symlink %s: %w", rp, err)
			}
		case d.Type().IsRegular():
			if err := uploadFile(c, lp, rp, info.Mode(), pr); err != nil {
				return fmt.Errorf("%s to %s: %w", lp, rp, err)
			}
		default:
			return fmt.Errorf("%s: cannot copy a %s", lp, d.Type())
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("upload %s: %w", local, err)
	}
	for i := len(dirs) - 1; i >= 0; i-- {
		if err := c.Chmod(dirs[i].path, dirs[i].mode&modeBits); err != nil {
			return fmt.Errorf("upload %s: chmod %s: %w", local, dirs[i].path, err)
		}
	}
	return nil
}

func uploadFile(c *sftp.Client, local, remote string, mode fs.FileMode, pr *progress) error {
	in, err := os.Open(local)
	if err != nil {
		return err
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return err
	}
	tmp := path.Join(path.Dir(remote), "."+path.Base(remote)+".nix-hive-"+randomSuffix())
	f, err := c.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL)
	if err != nil {
		return fmt.Errorf("create %s: %w", tmp, err)
	}
	ok := false
	defer func() {
		if !ok {
			f.Close()
			c.Remove(tmp)
		}
	}()
	// The reader reports its size so sftp can pipeline writes.
	if _, err := f.ReadFrom(pr.reader(in, st.Size())); err != nil {
		return err
	}
	if err := f.Chmod(mode & modeBits); err != nil {
		return fmt.Errorf("chmod %s: %w", tmp, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close %s: %w", tmp, err)
	}
	if _, posix := c.HasExtension("posix-rename@openssh.com"); posix {
		err = c.PosixRename(tmp, remote)
	} else {
		// Plain SFTP rename refuses to replace an existing file.
		if rerr := c.Remove(remote); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
			err = rerr
		} else {
			err = c.Rename(tmp, remote)
		}
	}
	if err != nil {
		c.Remove(tmp)
		return fmt.Errorf("rename %s to %s: %w", tmp, remote, err)
	}
	ok = true
	return nil
}

// Download copies the remote file or directory (recursive must be set for a
// directory) to local, with the same rules as Upload (into local/<base>
// when local is an existing directory, modes and symlinks preserved,
// temporary name then rename, progress over all files).
func Download(ctx context.Context, c *sftp.Client, remote, local string, recursive bool, progress func(done, total int64)) error {
	if remote == "" {
		remote = "."
	}
	st, err := c.Stat(remote)
	if err != nil {
		return fmt.Errorf("download %s: %w", remote, err)
	}
	if st.IsDir() && !recursive {
		return fmt.Errorf("download %s: is a directory (copy it recursively)", remote)
	}
	target := local
	if lst, err := os.Stat(local); err == nil && lst.IsDir() {
		base := path.Base(remote)
		if base == "." || base == "/" {
			if real, err := c.RealPath(remote); err == nil {
				base = path.Base(real)
			}
		}
		target = filepath.Join(local, base)
	}
	total, err := remoteSize(c, remote)
	if err != nil {
		return fmt.Errorf("download %s: %w", remote, err)
	}
	pr := newProgress(ctx, total, progress)
	if !st.IsDir() {
		if err := downloadFile(c, remote, target, st.Mode(), pr); err != nil {
			return fmt.Errorf("download %s to %s: %w", remote, target, err)
		}
		return nil
	}
	type dirMode struct {
		path string
		mode fs.FileMode
	}
	var dirs []dirMode
	w := c.Walk(remote)
	for w.Step() {
		if err := w.Err(); err != nil {
			return fmt.Errorf("download %s: %w", remote, err)
		}
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("download %s: %w", remote, err)
		}
		rp, info := w.Path(), w.Stat()
		lp := filepath.Join(target, filepath.FromSlash(remoteRel(remote, rp)))
		switch {
		case info.IsDir():
			if err := os.Mkdir(lp, 0o700); err != nil {
				if lst, serr := os.Stat(lp); serr != nil || !lst.IsDir() {
					return fmt.Errorf("download %s: %w", remote, err)
				}
				if err := os.Chmod(lp, 0o700); err != nil {
					return fmt.Errorf("download %s: %w", remote, err)
				}
			}
			dirs = append(dirs, dirMode{lp, info.Mode()})
		case info.Mode()&fs.ModeSymlink != 0:
			dest, err := c.ReadLink(rp)
			if err != nil {
				return fmt.Errorf("download %s: readlink %s: %w", remote, rp, err)
			}
			_ = os.Remove(lp)
			if err := os.Symlink(dest, lp); err != nil {
				return fmt.Errorf("download %s: %w", remote, err)
			}
		case info.Mode().IsRegular():
			if err := downloadFile(c, rp, lp, info.Mode(), pr); err != nil {
				return fmt.Errorf("download %s to %s: %w", rp, lp, err)
			}
		default:
			return fmt.Errorf("download %s: %s: cannot copy a %s", remote, rp, info.Mode().Type())
		}
	}
	for i := len(dirs) - 1; i >= 0; i-- {
		if err := os.Chmod(dirs[i].path, dirs[i].mode&modeBits); err != nil {
			return fmt.Errorf("download %s: %w", remote, err)
		}
	}
	return nil
}

func downloadFile(c *sftp.Client, remote, local string, mode fs.FileMode, pr *progress) error {
	in, err := c.Open(remote)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.CreateTemp(filepath.Dir(local), "."+filepath.Base(local)+".nix-hive-*")
	if err != nil {
		return err
	}
	ok := false
	defer func() {
		if !ok {
			out.Close()
			os.Remove(out.Name())
		}
	}()
	// in.WriteTo reads with concurrent requests; the writer counts.
	if _, err := in.WriteTo(pr.writer(out)); err != nil {
		return err
	}
	if err := out.Chmod(mode & modeBits); err != nil {
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	if err := os.Rename(out.Name(), local); err != nil {
		return err
	}
	ok = true
	return nil
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

func localSize(root string) (int64, error) {
	var n int64
	err := filepath.WalkDir(root, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			info, err := d.Info()
			if err != nil {
				return err
			}
			n += info.Size()
		}
		return nil
	})
	return n, err
}

func remoteSize(c *sftp.Client, root string) (int64, error) {
	st, err := c.Stat(root)
	if err != nil {
		return 0, err
	}
	if !st.IsDir() {
		return st.Size(), nil
	}
	var n int64
	w := c.Walk(root)
	for w.Step() {
		if err := w.Err(); err != nil {
			return 0, err
		}
		if w.Stat().Mode().IsRegular() {
			n += w.Stat().Size()
		}
	}
	return n, nil
}

func randomSuffix() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
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
