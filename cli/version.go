package cli

import (
	"regexp"
	"runtime/debug"
	"strings"
)

// Stamp is the version string Main takes, made of what a build's linker
// variables say (cmd/nix-hive's main.version and main.revision): the
// release, and the commit the build was made from ("<commit>-dirty" when
// it had uncommitted changes) as semver build metadata,
// "0.1.0+63031cc5…". revision "" is unknown, as in a build from a
// checkout, which the Go toolchain records itself.
func Stamp(release, revision string) string {
	if revision == "" {
		return release
	}
	return release + "+" + revision
}

// stampedRevision is a revision Stamp appended: a git commit (SHA-1 or
// SHA-256, full or abbreviated), maybe "-dirty". Build metadata of any
// other form is part of the release.
var stampedRevision = regexp.MustCompile(`^(.*)\+([0-9a-f]{7,64})(-dirty)?$`)

// versionString says which nix-hive this is: the release set by the linker
// (or "dev"), the module version, the VCS revision and the Go version, so
// a bug report names the commit it is about. The revision is the one the
// Go toolchain recorded (a build from a git checkout), else the one the
// linker was given (a Nix build, or -buildvcs=false).
func versionString(version string) string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		info = &debug.BuildInfo{}
	}
	return formatVersion(version, info)
}

func formatVersion(version string, info *debug.BuildInfo) string {
	release, rev, modified := version, "", false
	if m := stampedRevision.FindStringSubmatch(version); m != nil {
		release, rev, modified = m[1], m[2], m[3] != ""
	}
	parts := []string{release}
	// A pseudo-version only repeats the revision printed below.
	if v := info.Main.Version; v != "" && v != "(devel)" && v != release && !strings.HasPrefix(v, "v0.0.0-") {
		parts = append(parts, "module "+v)
	}
	settings := map[string]string{}
	for _, s := range info.Settings {
		settings[s.Key] = s.Value
	}
	// The toolchain's record, read from the checkout itself, over what
	// the linker was told.
	if r := settings["vcs.revision"]; r != "" {
		rev, modified = r, settings["vcs.modified"] == "true"
	}
	when := settings["vcs.time"]
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
	if info.GoVersion != "" {
		parts = append(parts, info.GoVersion)
	}
	return strings.Join(parts, ", ")
}
