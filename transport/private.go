package transport

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"strconv"
	"strings"
	"sync"

	"github.com/pkg/sftp"
)

// PrivateFile is a file being written over sftp for dest. It is created
// with the owner bits of its final mode (so exactly its final mode for
// 0400 or 0600, less what the server's umask takes), in a staging
// directory beside dest that is 0700 from the moment it exists. Either
// would keep others out; the stage alone still does on a server that
// ignores the mode in a create request. Group and other bits come only
// with Commit, once the file is complete.
type PrivateFile struct {
	*sftp.File
	c     *SFTP
	stage *Stage // removed with the file: CreatePrivate's own
	in    *Stage // the stage it was created in
	asked fs.FileMode
	name  string
	dest  string
	done  bool
	// moded is the mode SetOwner gave the file, which Commit need not
	// give again.
	moded *fs.FileMode
}

// CreatePrivate creates a PrivateFile for dest that will have mode, in a
// staging directory of its own (see NewStage).
func CreatePrivate(c *SFTP, dest string, mode fs.FileMode) (*PrivateFile, error) {
	s, err := NewStage(c, path.Dir(dest))
	if err != nil {
		return nil, err
	}
	t, err := s.Create(dest, mode)
	if err != nil {
		s.Remove()
		return nil, err
	}
	t.stage = s
	return t, nil
}

// A Stage is a staging directory in which PrivateFiles are written for
// destinations in the directory it is in: one for many files (a host's
// keys) spares a directory made and removed for each.
type Stage struct {
	c   *SFTP
	dir string
	// made is what the stage's first create gave its file (the same
	// server, umask and directory give every later one the same), nil
	// until known, or when it could not be learned.
	probe sync.Once
	made  *made
}

// made is the owner a create in a stage gives, and the mode it gave for
// the owner bits asked.
type made struct {
	uid, gid   uint32
	asked, got fs.FileMode
}

// NewStage makes a staging directory in dir, 0700 from the moment it
// exists (see StagePrefix). The first of a session's stages in dir
// removes the staging directories there that uploads cut off earlier
// left behind.
func NewStage(c *SFTP, dir string) (*Stage, error) {
	c.removeStale(dir)
	s := &Stage{c: c, dir: path.Join(dir, c.stageName())}
	if err := c.MkdirMode(s.dir, 0o700); err != nil {
		return nil, fmt.Errorf("mkdir %s: %w", s.dir, err)
	}
	if err := c.Chmod(s.dir, 0o700); err != nil {
		s.Remove()
		return nil, fmt.Errorf("chmod %s: %w", s.dir, err)
	}
	return s, nil
}

// Create creates a PrivateFile in the stage for dest, which must be in
// the stage's directory, that will have mode. Files for different
// destinations may be written at once; one for dest must be committed or
// discarded before the next for the same dest is created.
func (s *Stage) Create(dest string, mode fs.FileMode) (*PrivateFile, error) {
	owner := mode.Perm() & 0o700
	t := &PrivateFile{c: s.c, in: s, asked: owner, name: path.Join(s.dir, path.Base(dest)), dest: dest}
	f, err := s.c.CreateMode(t.name, owner)
	if err != nil {
		return nil, fmt.Errorf("create %s: %w", t.name, err)
	}
	t.File = f
	s.probe.Do(func() {
		// One request per stage, so that SetOwner can skip one per file.
		fi, err := f.Stat()
		if err != nil {
			return
		}
		if st, ok := fi.Sys().(*sftp.FileStat); ok {
			s.made = &made{uid: st.UID, gid: st.GID, asked: owner, got: fi.Mode().Perm()}
		}
	})
	// No chmod to the owner bits here: a umask only takes bits away, and
	// where a server ignores the create request's mode the stage, 0700,
	// still keeps others out until Commit gives the file its mode. A
	// host's hundreds of keys are a request each fewer.
	return t, nil
}

// Remove removes the staging directory. Best effort: it is for once its
// files are committed or discarded, and one left in it keeps it there
// (the next upload into its directory removes it once its writer is
// gone).
func (s *Stage) Remove() { _ = s.c.RemoveDirectory(s.dir) }

// Name is the temporary file's path.
func (t *PrivateFile) Name() string { return t.name }

// SetOwner gives the file, still in its stage, owner uid:gid and its
// final mode, in one request; none when the create gave it both already:
// the stage's files are created uid:gid (its probe says), and mode is
// owner bits alone that the create was asked for and, as the probe's
// showed, no umask took from.
func (t *PrivateFile) SetOwner(uid, gid int, mode fs.FileMode) error {
	if m := t.in.made; m != nil && m.uid == uint32(uid) && m.gid == uint32(gid) && m.asked == m.got &&
		mode == t.asked && t.asked&^m.asked == 0 {
		t.moded = &mode
		return nil
	}
	if err := t.c.ChownMode(t.name, uid, gid, mode); err != nil {
		return fmt.Errorf("chown %s: %w", t.name, err)
	}
	t.moded = &mode
	return nil
}

// Commit closes the file, gives it mode (unless SetOwner did) and renames
// it over dest (an atomic replacement where the server has
// posix-rename@openssh.com).
func (t *PrivateFile) Commit(mode fs.FileMode) error {
	err := t.File.Close()
	if err == nil && (t.moded == nil || *t.moded != mode) {
		if err = t.c.Chmod(t.name, mode); err != nil {
			err = fmt.Errorf("chmod %s: %w", t.name, err)
		}
	}
	if err == nil {
		if err = t.c.renameOver(t.name, t.dest); err != nil {
			err = fmt.Errorf("rename %s to %s: %w", t.name, t.dest, err)
		} else {
			t.done = true
		}
	}
	t.Discard()
	return err
}

// renameOver renames from to to, replacing to if it exists.
func (c *SFTP) renameOver(from, to string) error {
	if _, posix := c.HasExtension("posix-rename@openssh.com"); posix {
		return c.PosixRename(from, to)
	}
	// Plain SFTP rename refuses to replace an existing file.
	if err := c.Remove(to); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return c.Rename(from, to)
}

// Discard removes the temporary file, if still there, and its staging
// directory if CreatePrivate made it.
func (t *PrivateFile) Discard() {
	if t.File != nil {
		t.File.Close()
	}
	// Best effort: this runs on paths that already failed.
	if !t.done {
		_ = t.c.Remove(t.name)
	}
	if t.stage != nil {
		t.stage.Remove()
	}
}

// StagePrefix begins the name of the staging directory an upload makes
// beside its destination (NewStage here; keys' shell program names
// its own the same way): StagePrefix + BOOT + "-" + PID + "-" + random,
// where BOOT is the first 8 characters of the host's boot id and PID the
// process on the host that writes in it (the session's sftp server, or
// the shell program). An upload that could not clean up after itself
// (nix-hive killed, the connection lost) leaves its directory behind;
// once its writer is gone (PID no longer runs, or BOOT is not the host's
// boot) the next upload into that directory removes it. The directory of
// an upload that is still running is never removed, whoever runs it. A
// host where the owner cannot be learned (no /proc) gets staging
// directories named .nix-hive-<random>, which nothing removes.
const StagePrefix = ".nix-hive-stage-"

// StageOwner is the boot and writer's pid that a staging directory's name
// carries; ok is false for a name that is not a staging directory's.
func StageOwner(name string) (boot string, pid int, ok bool) {
	rest, ok := strings.CutPrefix(name, StagePrefix)
	if !ok {
		return "", 0, false
	}
	parts := strings.SplitN(rest, "-", 3)
	if len(parts) != 3 || len(parts[0]) != 8 {
		return "", 0, false
	}
	pid, err := strconv.Atoi(parts[1])
	if err != nil || pid <= 0 {
		return "", 0, false
	}
	return parts[0], pid, true
}

// stages is what an sftp session knows of staging directories: who owns
// the ones it makes, and the directories it has cleaned.
type stages struct {
	once sync.Once
	boot string // "" where unknown
	pid  int

	mu      sync.Mutex
	cleaned map[string]bool
}

// owner learns, once per session, the host's boot and the pid of the
// session's sftp server (the link /proc/self is the reading process's
// pid): what names its staging directories.
func (c *SFTP) owner() (boot string, pid int) {
	c.stages.once.Do(func() {
		link, err := c.ReadLink("/proc/self")
		if err != nil {
			return
		}
		p, err := strconv.Atoi(link)
		if err != nil || p <= 0 {
			return
		}
		f, err := c.Open("/proc/sys/kernel/random/boot_id")
		if err != nil {
			return
		}
		defer f.Close()
		b, err := io.ReadAll(io.LimitReader(f, 64))
		if id := strings.TrimSpace(string(b)); err == nil && len(id) >= 8 && !strings.Contains(id[:8], "-") {
			c.stages.boot, c.stages.pid = id[:8], p
		}
	})
	return c.stages.boot, c.stages.pid
}

// stageName is a new staging directory's name (see StagePrefix).
func (c *SFTP) stageName() string {
	boot, pid := c.owner()
	if boot == "" {
		return ".nix-hive-" + randomSuffix()
	}
	return StagePrefix + boot + "-" + strconv.Itoa(pid) + "-" + randomSuffix()
}

func randomSuffix() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// removeStale removes, once per session and directory, the staging
// directories in dir whose writer is gone. Best effort: a directory that
// cannot be read or removed is left as it is, and one whose writer's
// state is in doubt is kept.
func (c *SFTP) removeStale(dir string) {
	boot, _ := c.owner()
	if boot == "" {
		return
	}
	c.stages.mu.Lock()
	done := c.stages.cleaned[dir]
	if c.stages.cleaned == nil {
		c.stages.cleaned = map[string]bool{}
	}
	c.stages.cleaned[dir] = true
	c.stages.mu.Unlock()
	if done {
		return
	}
	ents, err := c.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range ents {
		b, pid, ok := StageOwner(e.Name())
		if !ok || !e.IsDir() {
			continue
		}
		if b == boot {
			if _, err := c.Stat("/proc/" + strconv.Itoa(pid)); !errors.Is(err, fs.ErrNotExist) {
				continue // its writer runs (or may)
			}
		}
		_ = c.RemoveAll(path.Join(dir, e.Name()))
	}
}
