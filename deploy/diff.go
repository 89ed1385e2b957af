package deploy

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"

	"github.com/nix-hive/nix-hive/internal/quantity"
	"github.com/nix-hive/nix-hive/nixcmd"
)

// Closure is a closure's store paths with their NAR sizes.
type Closure map[string]uint64

// Size is the closure's total NAR size.
func (c Closure) Size() uint64 {
	var n uint64
	for _, s := range c {
		n += s
	}
	return n
}

// LocalClosure is path's closure in this machine's store; ok is false
// when the store does not have path.
func LocalClosure(ctx context.Context, nix *nixcmd.Runner, path string) (c Closure, ok bool, err error) {
	// Asked recursively about a path it lacks, nix fails without saying
	// which; asked plainly, it marks the path invalid.
	top, err := nix.PathInfo(ctx, path)
	if err != nil {
		return nil, false, fmt.Errorf("closure of %s: %w", path, err)
	}
	if len(top) != 1 || !top[0].Valid {
		return nil, false, nil
	}
	all, err := nix.PathInfo(ctx, "--recursive", path)
	if err != nil {
		return nil, false, fmt.Errorf("closure of %s: %w", path, err)
	}
	c = make(Closure, len(all))
	for _, i := range all {
		c[i.Path] = i.NarSize
	}
	return c, true, nil
}

// PackageChange is a package whose versions or size differ between two
// closures. Versions are as Nix parses them from store path names; ""
// is a path without a version.
type PackageChange struct {
	Name      string   `json:"name"`
	Old       []string `json:"old"` // empty: added
	New       []string `json:"new"` // empty: removed
	SizeDelta int64    `json:"sizeDelta"`
}

// ClosureDiff is what changes from one closure to another, grouped by
// package the way `nix store diff-closures` groups it.
type ClosureDiff struct {
	Packages []PackageChange `json:"packages"`
	OldPaths int             `json:"oldPaths"`
	NewPaths int             `json:"newPaths"`
	OldSize  uint64          `json:"oldSize"`
	NewSize  uint64          `json:"newSize"`
	// Rebuilt counts the packages whose versions and size stayed but
	// whose store paths changed (a dependency or the build changed).
	Rebuilt int `json:"rebuilt"`
}

// SizeDelta is the change of the closure's total size.
func (d *ClosureDiff) SizeDelta() int64 { return int64(d.NewSize) - int64(d.OldSize) }

// sizeThreshold is the smallest size change that alone makes a package
// worth listing; Nix's diff-closures uses the same.
const sizeThreshold = 8 * 1024

// outputSuffix is a store path name's output suffix ("-dev", "-man"),
// which diff-closures folds into the package.
var outputSuffix = regexp.MustCompile(`^(.*)-(bin|dev|doc|man|info|lib|lib32|lib64|out|debug|static|devdoc|terminfo)$`)

// splitName parses a store path's name into package name and version as
// Nix does: the version starts after the first dash followed by a
// character that is not a letter.
func splitName(path string) (name, version string) {
	base := path[strings.LastIndexByte(path, '/')+1:]
	if i := strings.IndexByte(base, '-'); i == 32 {
		base = base[33:] // the hash
	}
	if m := outputSuffix.FindStringSubmatch(base); m != nil {
		base = m[1]
	}
	for i := 0; i+1 < len(base); i++ {
		if base[i] == '-' && !isLetter(base[i+1]) {
			return base[:i], base[i+1:]
		}
	}
	return base, ""
}

func isLetter(b byte) bool { return b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z' }

type pkg struct {
	versions map[string]bool
	paths    map[string]bool
	size     uint64
}

func byPackage(c Closure) map[string]*pkg {
	out := map[string]*pkg{}
	for p, size := range c {
		name, version := splitName(p)
		g := out[name]
		if g == nil {
			g = &pkg{versions: map[string]bool{}, paths: map[string]bool{}}
			out[name] = g
		}
		g.versions[version] = true
		g.paths[p] = true
		g.size += size
	}
	return out
}

// DiffClosures compares closure old with closure new.
func DiffClosures(old, new Closure) *ClosureDiff {
	d := &ClosureDiff{OldPaths: len(old), NewPaths: len(new), OldSize: old.Size(), NewSize: new.Size()}
	before, after := byPackage(old), byPackage(new)
	names := slices.Sorted(maps.Keys(before))
	for n := range after {
		if before[n] == nil {
			names = append(names, n)
		}
	}
	slices.Sort(names)
	for _, n := range names {
		b, a := before[n], after[n]
		ch := PackageChange{Name: n, Old: []string{}, New: []string{}}
		var bs, as uint64
		var bp, ap map[string]bool
		if b != nil {
			ch.Old, bs, bp = slices.Sorted(maps.Keys(b.versions)), b.size, b.paths
		}
		if a != nil {
			ch.New, as, ap = slices.Sorted(maps.Keys(a.versions)), a.size, a.paths
		}
		ch.SizeDelta = int64(as) - int64(bs)
		switch {
		case !slices.Equal(ch.Old, ch.New) || abs(ch.SizeDelta) >= sizeThreshold:
			d.Packages = append(d.Packages, ch)
		case !maps.Equal(bp, ap):
			d.Rebuilt++
		}
	}
	return d
}

func abs(n int64) int64 {
	if n < 0 {
		return -n
	}
	return n
}

// String is the change as diff-closures writes it:
// "name: 1.0 → 1.1, +1.2 MiB", ∅ for no version, ε for an empty one.
func (c PackageChange) String() string {
	s := c.Name + ": " + versions(c.Old) + " → " + versions(c.New)
	if abs(c.SizeDelta) >= sizeThreshold {
		s += ", " + SignedBytes(c.SizeDelta)
	}
	return s
}

func versions(vs []string) string {
	if len(vs) == 0 {
		return "∅"
	}
	out := make([]string, len(vs))
	for i, v := range vs {
		out[i] = cmp.Or(v, "ε")
	}
	return strings.Join(out, ", ")
}

// SignedBytes is a size change: "+1.0 MiB", "-12.0 KiB", "+0 B".
func SignedBytes(n int64) string {
	if n < 0 {
		return "-" + quantity.Bytes(uint64(-n))
	}
	return "+" + quantity.Bytes(uint64(n))
}
