package transport

import (
	"fmt"
	"io/fs"
	"path"

	"github.com/pkg/sftp"
)

// PrivateFile is a file being written over sftp for dest. It is created
// with the owner bits of its final mode (so exactly its final mode for
// 0400 or 0600), in a directory of its own beside dest that is 0700 from
// the moment it exists. Either would keep others out; both together still
// do on a server that ignores the mode in a create request. Group and
// other bits come only with Commit, once the file is complete.
type PrivateFile struct {
	*sftp.File
	c     *SFTP
	stage string
	name  string
	dest  string
	done  bool
}

// CreatePrivate creates a PrivateFile for dest that will have mode.
func CreatePrivate(c *SFTP, dest string, mode fs.FileMode) (*PrivateFile, error) {
	stage := path.Join(path.Dir(dest), ".nix-hive-"+randomSuffix())
	if err := c.MkdirMode(stage, 0o700); err != nil {
		return nil, fmt.Errorf("mkdir %s: %w", stage, err)
	}
	t := &PrivateFile{c: c, stage: stage, name: path.Join(stage, path.Base(dest)), dest: dest}
	if err := c.Chmod(stage, 0o700); err != nil {
		t.Discard()
		return nil, fmt.Errorf("chmod %s: %w", stage, err)
	}
	owner := mode.Perm() & 0o700
	f, err := c.CreateMode(t.name, owner)
	if err != nil {
		t.Discard()
		return nil, fmt.Errorf("create %s: %w", t.name, err)
	}
	t.File = f
	if err := f.Chmod(owner); err != nil {
		t.Discard()
		return nil, fmt.Errorf("chmod %s: %w", t.name, err)
	}
	return t, nil
}

// Name is the temporary file's path.
func (t *PrivateFile) Name() string { return t.name }

// Commit closes the file, gives it mode and renames it over dest (an
// atomic replacement where the server has posix-rename@openssh.com).
func (t *PrivateFile) Commit(mode fs.FileMode) error {
	err := t.File.Close()
	if err == nil {
		if err = t.c.Chmod(t.name, mode); err != nil {
			err = fmt.Errorf("chmod %s: %w", t.name, err)
		}
	}
	if err == nil {
		if err = (remoteFS{t.c}).Rename(t.name, t.dest); err != nil {
			err = fmt.Errorf("rename %s to %s: %w", t.name, t.dest, err)
		} else {
			t.done = true
		}
	}
	t.Discard()
	return err
}

// Discard removes the temporary file, if still there, and its directory.
func (t *PrivateFile) Discard() {
	if t.File != nil {
		t.File.Close()
	}
	// Best effort: this runs on paths that already failed.
	if !t.done {
		_ = t.c.Remove(t.name)
	}
	_ = t.c.RemoveDirectory(t.stage)
}
