// Package state reads and writes hive.state, the cache of what nix-hive last
// built and deployed. It is never the source of truth: the hive and the
// hosts are; hive.state only lets `--no build,push` resume.
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
)

// Version is the file format version.
const Version = 1

// File is the content of hive.state. Methods are safe for concurrent use.
type File struct {
	mu        sync.Mutex
	path      string
	Version   int                 `json:"version"`
	Systems   map[string]System   `json:"systems"`
	Instances map[string]Instance `json:"instances"`
}

// System is the last build of one system.
type System struct {
	DrvPath string    `json:"drvPath"`
	OutPath string    `json:"outPath"`
	BuiltAt time.Time `json:"builtAt"`
}

// Instance is the last deploy outcome of one instance.
type Instance struct {
	System  string    `json:"system"`
	OutPath string    `json:"outPath"`
	Step    string    `json:"step"`   // last step reached
	Status  string    `json:"status"` // ok, failed, skipped, rolled-back ...
	Error   string    `json:"error,omitempty"`
	Time    time.Time `json:"time"`
}

// Load reads path; a missing file is an empty state.
func Load(path string) (*File, error) {
	f := &File{path: path, Version: Version, Systems: map[string]System{}, Instances: map[string]Instance{}}
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

// SetSystem records a build.
func (f *File) SetSystem(name string, s System) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Systems[name] = s
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
}

// Instance returns the last recorded outcome of name.
func (f *File) Instance(name string) (Instance, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	i, ok := f.Instances[name]
	return i, ok
}

// Save writes the state atomically (temp file and rename), so an
// interrupted run never leaves a truncated file behind.
func (f *File) Save() error {
	f.mu.Lock()
	data, err := json.MarshalIndent(f, "", "  ")
	f.mu.Unlock()
	if err != nil {
		return fmt.Errorf("encode state: %w", err)
	}
	dir := filepath.Dir(f.path)
	tmp, err := os.CreateTemp(dir, ".hive.state-")
	if err != nil {
		return fmt.Errorf("write state %s: %w", f.path, err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(append(data, '\n')); err != nil {
		tmp.Close()
		return fmt.Errorf("write state %s: %w", f.path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write state %s: %w", f.path, err)
	}
	if err := os.Rename(tmp.Name(), f.path); err != nil {
		return fmt.Errorf("write state %s: %w", f.path, err)
	}
	return nil
}
