package cli

import (
	"runtime/debug"
	"strings"
)

// versionString says which nix-hive this is: the release set by the linker
// (or "dev"), the module version and the VCS revision recorded by the Go
// toolchain, so a bug report from a source build names its commit.
func versionString(release string) string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return release
	}
	return formatVersion(release, info)
}

func formatVersion(release string, info *debug.BuildInfo) string {
	parts := []string{release}
	// A pseudo-version only repeats the revision printed below.
	if v := info.Main.Version; v != "" && v != "(devel)" && v != release && !strings.HasPrefix(v, "v0.0.0-") {
		parts = append(parts, "module "+v)
	}
	var rev, when string
	modified := false
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.time":
			when = s.Value
		case "vcs.modified":
			modified = s.Value == "true"
		}
	}
	if rev != "" {
		if len(rev) > 12 {
			rev = rev[:12]
		}
		r := "revision " + rev
		if when != "" {
			r += " (" + when + ")"
		}
		if modified {
			r += " with uncommitted changes"
		}
		parts = append(parts, r)
	}
	parts = append(parts, info.GoVersion)
	return strings.Join(parts, ", ")
}
