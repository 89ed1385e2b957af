package state

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Version is the file format version.
const Version = 1

// File is the content of hive.state. Methods are safe for concurrent use;
// concurrent nix-hive runs sharing the file each keep their own records
// (see Save).
type File struct {
	mu        sync.Mutex
	path      string
	dirtySys  map[string]bool // set by this process: they win over the file's
	dirtyInst map[string]bool
	Version   int                 `json:"version"`
	Systems   map[string]System   `json:"systems"`
	Instances map[string]Instance `json:"instances"`
}

// System is the last build of one system.
type System struct {
	DrvPath string `json:"drvPath"`
	OutPath string `json:"outPath"`
	// Profiles are its profiles' packages, by profile name.
	Profiles map[string]string `json:"profiles,omitempty"`
	// On is the build host whose store holds them ("" this machine's).
	On      string    `json:"on,omitempty"`
	BuiltAt time.Time `json:"builtAt"`
}

// Instance is the last deploy outcome of one instance.
type Instance struct {
	System  string `json:"system"`
	OutPath string `json:"outPath"`
	// Specialisation is the specialisation of OutPath the deploy
	// activated, if any.
	Specialisation string `json:"specialisation,omitempty"`
	Goal           string `json:"goal,omitempty"`
	Step           string `json:"step"`   // where it ended
	Status         string `json:"status"` // ok, failed, skipped, rolled-back ...
	Error          string `json:"error,omitempty"`
	// Before is what the instance ran when the deploy reached it; Job the
	// activation job on the host (its record is in /run/nix-hive/jobs).
	Before string    `json:"before,omitempty"`
	Job    string    `json:"job,omitempty"`
	Time   time.Time `json:"time"`
	// Stored is what the instance last received as a store for others'
	// closures, in a deploy that did not target it: kept beside its own
	// activation record above, which that deploy did not change.
	Stored *Stored `json:"stored,omitempty"`
}

// Stored is a store instance's last receipt of closures for its
// consumers.
type Stored struct {
	Paths  []string  `json:"paths"`
	Status string    `json:"status"` // stored, failed, interrupted ...
	Error  string    `json:"error,omitempty"`
	Time   time.Time `json:"time"`
}

// Load reads path; a missing file is an empty state.
func Load(path string) (*File, error) {
	f := &File{path: path, Version: Version, Systems: map[string]System{}, Instances: map[string]Instance{},
		dirtySys: map[string]bool{}, dirtyInst: map[string]bool{}}
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return f, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read state %s: %w", path, err)
	}
	if err := json.Unmarshal(data, f); err != nil {
		return nil, fmt.Errorf("read state %s: %w (it is only a cache: delete it to start over)", path, err)
	}
	if f.Version > Version {
		return nil, fmt.Errorf("read state %s: version %d is newer than this nix-hive understands (%d)", path, f.Version, Version)
	}
	if f.Systems == nil {
		f.Systems = map[string]System{}
	}
	if f.Instances == nil {
		f.Instances = map[string]Instance{}
	}
	return f, nil
}

// Path is where the state is saved.
func (f *File) Path() string { return f.path }

// AuxPath is where nix-hive keeps name (GC roots, generated known_hosts)
// beside the state: .nix-hive/name in the state's directory.
func (f *File) AuxPath(name string) string {
	return filepath.Join(filepath.Dir(f.path), ".nix-hive", name)
}

// SetSystem records a build.
func (f *File) SetSystem(name string, s System) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Systems[name] = s
	f.dirtySys[name] = true
}

// System returns the last build of name.
func (f *File) System(name string) (System, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, ok := f.Systems[name]
	return s, ok
}

// SetInstance records a deploy outcome.
func (f *File) SetInstance(name string, i Instance) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Instances[name] = i
	f.dirtyInst[name] = true
}

// Instance returns the last recorded outcome of name.
func (f *File) Instance(name string) (Instance, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	i, ok := f.Instances[name]
	return i, ok
}

// Save merges this process's records into the file on disk and writes it
// atomically (temporary file, fsync, rename), under a lock on the
// directory: two deploys of different instances both keep their records,
// and a crash never leaves a truncated file. Records this process did not
// set are taken from the file, so the in-memory state is the merged one.
func (f *File) Save() error {
	dir := filepath.Dir(f.path)
	unlock, err := lockDir(dir)
	if err != nil {
		return fmt.Errorf("write state %s: %w", f.path, err)
	}
	defer unlock()
	disk, err := Load(f.path)
	if err != nil {
		// Unreadable: it is only a cache, and ours replaces it.
		disk = &File{Systems: map[string]System{}, Instances: map[string]Instance{}}
	}
	f.mu.Lock()
	for k, v := range disk.Systems {
		if !f.dirtySys[k] {
			f.Systems[k] = v
		}
	}
	for k, v := range disk.Instances {
		if !f.dirtyInst[k] {
			f.Instances[k] = v
		}
	}
	data, err := json.MarshalIndent(f, "", "  ")
	f.mu.Unlock()
	if err != nil {
		return fmt.Errorf("encode state: %w", err)
	}
	if err := writeAtomic(f.path, append(data, '\n')); err != nil {
		return fmt.Errorf("write state %s: %w", f.path, err)
	}
	return nil
}

func writeAtomic(path string, data []byte) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, ".hive.state-")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	// The rename is durable once the directory is.
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// lockDir takes an exclusive flock on dir (no lock file to litter the
// hive's directory) and returns its release.
func lockDir(dir string) (func(), error) {
	d, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(d.Fd()), unix.LOCK_EX); err != nil {
		d.Close()
		return nil, fmt.Errorf("lock %s: %w", dir, err)
	}
	return func() {
		unix.Flock(int(d.Fd()), unix.LOCK_UN)
		d.Close()
	}, nil
}
