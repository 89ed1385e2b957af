package cli

import (
	"runtime/debug"
	"testing"
)

func TestFormatVersion(t *testing.T) {
	vcs := []debug.BuildSetting{{Key: "vcs.revision", Value: "63031cc5c972d634676334fb154ce2ec34bf79cb"},
		{Key: "vcs.time", Value: "2026-11-26T16:27:29Z"}, {Key: "vcs.modified", Value: "true"}}
	tests := []struct {
		name    string
		release string
		info    debug.BuildInfo
		want    string
	}{
		{"source build", "dev", debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "(devel)"}, Settings: vcs},
			"dev, revision 63031cc5c972 (2026-11-26T16:27:29Z) with uncommitted changes, go1.26.8"},
		{"go install of a tag", "dev", debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "v0.2.0"}},
			"dev, module v0.2.0, go1.26.8"},
		{"release build", "0.1.0", debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "v0.0.0-20261126162729-63031cc5c972"},
			Settings: vcs[:2]}, "0.1.0, revision 63031cc5c972 (2026-11-26T16:27:29Z), go1.26.8"},
		// A Nix build: no .git for the toolchain to read, the commit
		// given to the linker by package.nix.
		{"stamped build", Stamp("0.1.0", "63031cc5c972d634676334fb154ce2ec34bf79cb"),
			debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "(devel)"}},
			"0.1.0, revision 63031cc5c972, go1.26.8"},
		{"stamped dirty build", Stamp("0.1.0", "63031cc5c972d634676334fb154ce2ec34bf79cb-dirty"),
			debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "(devel)"}},
			"0.1.0, revision 63031cc5c972 with uncommitted changes, go1.26.8"},
		{"go build -buildvcs=false", Stamp("dev", "63031cc"), debug.BuildInfo{GoVersion: "go1.26.8"},
			"dev, revision 63031cc, go1.26.8"},
		// The toolchain read the checkout; a stale stamp says less.
		{"stamped and recorded", Stamp("dev", "1111111111111111111111111111111111111111-dirty"),
			debug.BuildInfo{GoVersion: "go1.26.8", Settings: vcs[:2]},
			"dev, revision 63031cc5c972 (2026-11-26T16:27:29Z), go1.26.8"},
		{"nothing known", Stamp("dev", ""), debug.BuildInfo{GoVersion: "go1.26.8"}, "dev, go1.26.8"},
		{"build metadata that is no commit", "1.0.0+build.5", debug.BuildInfo{GoVersion: "go1.26.8"},
			"1.0.0+build.5, go1.26.8"},
		{"no build info", Stamp("0.1.0", "63031cc5c972"), debug.BuildInfo{}, "0.1.0, revision 63031cc5c972"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := formatVersion(tt.release, &tt.info); got != tt.want {
				t.Errorf("formatVersion = %q; want %q", got, tt.want)
			}
		})
	}
}
