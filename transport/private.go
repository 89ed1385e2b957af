package transport

import (
	"fmt"
	"io/fs"
	"os"
	"path"

	"github.com/pkg/sftp"
)

// PrivateFile is a file being written over sftp for dest, in a directory
// of its own beside dest that only the login user can enter, so that no one
// else can open it while it is written, whatever the host's umask (sftp
// creates files with the server's default mode, 0644 under a 022 umask).
// Commit gives it its mode and renames it over dest; Discard removes it.
type PrivateFile struct {
	*sftp.File
	c     *sftp.Client
	stage string
	name  string
	dest  string
	done  bool
}

// CreatePrivate creates a PrivateFile for dest: the staging directory is
// made 0700 before anything is in it, and the file 0600 while still
// empty.
func CreatePrivate(c *sftp.Client, dest string) (*PrivateFile, error) {
	stage := path.Join(path.Dir(dest), ".nix-hive-"+randomSuffix())
	if err := c.Mkdir(stage); err != nil {
		return nil, fmt.Errorf("mkdir %s: %w", stage, err)
	}
	t := &PrivateFile{c: c, stage: stage, name: path.Join(stage, path.Base(dest)), dest: dest}
	if err := c.Chmod(stage, 0o700); err != nil {
		t.Discard()
		return nil, fmt.Errorf("chmod %s: %w", stage, err)
	}
	f, err := c.OpenFile(t.name, os.O_WRONLY|os.O_CREATE|os.O_EXCL)
	if err != nil {
		t.Discard()
		return nil, fmt.Errorf("create %s: %w", t.name, err)
	}
	t.File = f
	if err := f.Chmod(0o600); err != nil {
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
