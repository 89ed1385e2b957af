package eval

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
)

// Inventory is the normalized hive: everything about instances and systems
// that can be known without evaluating a system's toplevel.
type Inventory struct {
	Instances map[string]*Instance `json:"instances"`
	Systems   map[string]*System   `json:"systems"`
	Errors    []string             `json:"errors,omitempty"`
	Signing   Signing              `json:"signing"`
	Paths     map[string]string    `json:"paths"`
	Build     BuildSettings        `json:"build"`
	// HostCAs are the hive's hostCA keys: host certificates they sign are
	// accepted for instances without a pinned hostKey.
	HostCAs []string `json:"hostCAs"`
}

// Instance is one host running one system.
type Instance struct {
	Name   string `json:"name"`
	System string `json:"system"`
	Host   string `json:"host"`
	// Hosts are the instance's addresses, tried in order (the first is
	// Host): a hive's `host = [ "10.0.0.5" "vpn-web-1" ];`.
	Hosts []string `json:"hosts"`
	User  string   `json:"user"`
	Port  int      `json:"port"`
	Jump  string   `json:"jump,omitempty"`
	Store string   `json:"store,omitempty"`
	// StoreUser is the login consumers use to substitute from this
	// instance when it is their store.
	StoreUser string   `json:"storeUser"`
	Tags      []string `json:"tags"`
	// Specialisation, when set, is the specialisation of the system the
	// instance runs (specialisation/NAME of its toplevel), as
	// nixos-rebuild --specialisation activates it.
	Specialisation string         `json:"specialisation,omitempty"`
	HostKeys       []string       `json:"hostKeys"`
	SSH            map[string]any `json:"ssh"`
	Meta           map[string]any `json:"meta"`
	// Keys are the secrets uploaded to the instance, by name: where each
	// comes from and where it goes, never its value.
	Keys map[string]*Key `json:"keys"`
}

// Key is a secret's metadata (lib/hive.nix keyInfo).
type Key struct {
	Name string `json:"name"`
	// Source is "text" (in the hive), "file" (read on this machine) or
	// "command" (its stdout, run on this machine).
	Source  string   `json:"source"`
	File    string   `json:"file,omitempty"`    // for "file": as given (relative to the hive)
	Command []string `json:"command,omitempty"` // for "command": argv
	Dest    string   `json:"dest"`
	User    string   `json:"user"`
	Group   string   `json:"group"`
	Mode    string   `json:"mode"`   // octal, e.g. "0400"
	Upload  string   `json:"upload"` // "pre-activation" or "post-activation"
	// Timeout bounds a command (a Go duration, "30s"); "" leaves it to
	// the run's --key-timeout.
	Timeout string `json:"timeout,omitempty"`
}

// Upload points of a key.
const (
	PreActivation  = "pre-activation"
	PostActivation = "post-activation"
)

// StoreIsURL reports whether the instance substitutes from a Nix store URL
// (a binary cache) rather than from another instance.
func (i *Instance) StoreIsURL() bool { return strings.Contains(i.Store, "://") }

// System is a buildable system; its toplevel is only evaluated by Build.
type System struct {
	Name     string            `json:"name"`
	Platform string            `json:"platform,omitempty"`
	Kind     string            `json:"kind"`
	Paths    map[string]string `json:"paths"`
	Meta     map[string]any    `json:"meta"`
	// Profiles are the system's profiles beside the system one, by name
	// (their packages are only evaluated by Build).
	Profiles map[string]*Profile `json:"profiles"`
	// BuildHost is the instance the system is built on (build.host),
	// "" for the hive's nix.build.host.
	BuildHost string `json:"buildHost,omitempty"`
}

// BuildHostOf is the instance system is built on: its build.host, else
// the hive's nix.build.host; "" builds here.
func (inv *Inventory) BuildHostOf(system string) string {
	if s := inv.Systems[system]; s != nil && s.BuildHost != "" {
		return s.BuildHost
	}
	return inv.Build.Host
}

// Profile is a profile a system carries beside the system profile, as
// deploy-rs's profiles: a user's home-manager generation, say. Its
// package becomes /nix/var/nix/profiles/per-user/User/NAME on the host,
// and User runs its Activate after the system is activated.
type Profile struct {
	User string `json:"user"`
	// Activate is the command inside the package that activates it, a
	// relative path ("activate").
	Activate string `json:"activate"`
}

// BuiltProfile is one of a built system's profiles as a host gets it:
// Path becomes /nix/var/nix/profiles/per-user/User/Name, and User runs
// Path/Activate.
type BuiltProfile struct {
	Name     string `json:"name"`
	User     string `json:"user"`
	Path     string `json:"path"`
	Activate string `json:"activate"`
}

// BuiltProfiles are system's profiles as built in b, by name.
func (inv *Inventory) BuiltProfiles(system string, b Built) ([]BuiltProfile, error) {
	var specs map[string]*Profile
	if sys := inv.Systems[system]; sys != nil {
		specs = sys.Profiles
	}
	var out []BuiltProfile
	for _, n := range slices.Sorted(maps.Keys(b.Profiles)) {
		spec := specs[n]
		if spec == nil {
			return nil, fmt.Errorf("system %s: its build has a profile %s that the hive does not name (build it again)", system, n)
		}
		out = append(out, BuiltProfile{Name: n, User: spec.User, Path: b.Profiles[n], Activate: spec.Activate})
	}
	if len(out) != len(specs) {
		return nil, fmt.Errorf("system %s has profiles its build lacks (build it again)", system)
	}
	return out, nil
}

// Signing is the hive's signing configuration.
type Signing struct {
	KeyFile   string `json:"keyFile,omitempty"`
	PublicKey string `json:"publicKey,omitempty"`
}

// BuildSettings holds hive-wide options for nix build.
type BuildSettings struct {
	Flags []string `json:"flags"`
	// Host is the instance the systems are built on (nix.build.host),
	// through Nix's remote builders; "" builds here.
	Host string `json:"host,omitempty"`
}

// rawInstance mirrors an instance as lib/hive.nix emits it, where absent
// values are null.
type rawInstance struct {
	Instance
	Jump  *string `json:"jump"`
	Store *string `json:"store"`
}

func decodeInventory(data []byte) (*Inventory, error) {
	var raw struct {
		Inventory
		Instances map[string]*rawInstance `json:"instances"`
		Signing   struct {
			KeyFile   *string `json:"keyFile"`
			PublicKey *string `json:"publicKey"`
		} `json:"signing"`
	}
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("decode inventory: %w", err)
	}
	inv := raw.Inventory
	inv.Instances = make(map[string]*Instance, len(raw.Instances))
	for name, ri := range raw.Instances {
		in := ri.Instance
		if ri.Jump != nil {
			in.Jump = *ri.Jump
		}
		if ri.Store != nil {
			in.Store = *ri.Store
		}
		inv.Instances[name] = &in
	}
	if raw.Signing.KeyFile != nil {
		inv.Signing.KeyFile = *raw.Signing.KeyFile
	}
	if raw.Signing.PublicKey != nil {
		inv.Signing.PublicKey = *raw.Signing.PublicKey
	}
	return &inv, nil
}

// ErrHive matches (with errors.Is) every error in what the user wrote
// rather than in what happened: an invalid hive, an expression that does
// not evaluate, a target that matches nothing. Commands exit 2 for them,
// as for a bad command line.
var ErrHive = errors.New("error in the hive")

// hiveError marks err as an ErrHive without changing its message.
type hiveError struct{ error }

// InHive marks err, found by another package in what the hive says (an
// ssh option transport refuses, say), as an ErrHive.
func InHive(err error) error {
	if err == nil {
		return nil
	}
	return hiveError{err}
}

func (e hiveError) Is(target error) bool { return target == ErrHive }
func (e hiveError) Unwrap() error        { return e.error }

// InvalidHiveError lists everything wrong with a hive definition at once,
// so a user fixes them in one round.
type InvalidHiveError struct {
	File     string
	Problems []string
}

func (e *InvalidHiveError) Is(target error) bool { return target == ErrHive }

func (e *InvalidHiveError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: invalid hive (%d problem", e.File, len(e.Problems))
	if len(e.Problems) != 1 {
		b.WriteString("s")
	}
	b.WriteString(")")
	for _, p := range e.Problems {
		fmt.Fprintf(&b, "\n  %s: %s", e.File, p)
	}
	return b.String()
}

// InstanceNames returns the instance names in natural order (www-2 before
// www-10), the order an operator reads a fleet in.
func (inv *Inventory) InstanceNames() []string {
	names := make([]string, 0, len(inv.Instances))
	for n := range inv.Instances {
		names = append(names, n)
	}
	sort.Slice(names, func(i, j int) bool { return naturalLess(names[i], names[j]) })
	return names
}

// naturalLess compares strings with runs of digits compared as numbers.
func naturalLess(a, b string) bool {
	for a != "" && b != "" {
		da, db := digitPrefix(a), digitPrefix(b)
		if da != "" && db != "" {
			na, nb := strings.TrimLeft(da, "0"), strings.TrimLeft(db, "0")
			if len(na) != len(nb) {
				return len(na) < len(nb)
			}
			if na != nb {
				return na < nb
			}
			a, b = a[len(da):], b[len(db):]
			continue
		}
		if a[0] != b[0] {
			return a[0] < b[0]
		}
		a, b = a[1:], b[1:]
	}
	return len(a) < len(b)
}

func digitPrefix(s string) string {
	i := 0
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	return s[:i]
}

// SystemsOf returns the unique systems of the given instances, in the order
// they first appear.
func (inv *Inventory) SystemsOf(instances []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, n := range instances {
		s := inv.Instances[n].System
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}

// Source is where a hive is defined.
type Source struct {
	// Dir is the directory the hive lives in; the state file and relative
	// key files are resolved against it.
	Dir string
	// File is hive.nix (non-flake) or flake.nix.
	File  string
	Flake bool
}

// ErrNoHive is returned when the config points at nothing usable.
var ErrNoHive = errors.New("no hive found")

// Locate resolves -c/--config: a directory holding flake.nix or hive.nix,
// or a file. A flake wins over hive.nix in the same directory, as the flake
// is what `nix` itself would pick.
func Locate(config string) (Source, error) {
	abs, err := filepath.Abs(config)
	if err != nil {
		return Source{}, fmt.Errorf("locate hive %s: %w", config, err)
	}
	st, err := os.Stat(abs)
	if err != nil {
		return Source{}, fmt.Errorf("locate hive: %w", err)
	}
	if !st.IsDir() {
		return Source{Dir: filepath.Dir(abs), File: abs, Flake: filepath.Base(abs) == "flake.nix"}, nil
	}
	for _, cand := range []struct {
		name  string
		flake bool
	}{{"flake.nix", true}, {"hive.nix", false}} {
		p := filepath.Join(abs, cand.name)
		if _, err := os.Stat(p); err == nil {
			return Source{Dir: abs, File: p, Flake: cand.flake}, nil
		}
	}
	return Source{}, fmt.Errorf("%s: %w (expected flake.nix with a `hive` output, or hive.nix; set -c/--config)", abs, ErrNoHive)
}
