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
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := formatVersion(tt.release, &tt.info); got != tt.want {
				t.Errorf("formatVersion = %q; want %q", got, tt.want)
			}
		})
	}
}
