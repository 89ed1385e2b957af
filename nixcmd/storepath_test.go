package nixcmd

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nix-hive/nix-hive/internal/nixtest"
)

// SourcePath must be exactly what the real nix-store --add answers, or a
// host would look for its agent where Nix never put it.
func TestSourcePathIsNixStoreAdd(t *testing.T) {
	nixtest.Require(t)
	for _, tc := range []struct{ name, contents string }{
		{"empty", ""},
		{"seven-bytes", "1234567"},
		{"eight-bytes", "12345678"},
		{"nix-hive-agent-0123456789ab", "#!/bin/sh\necho agent\n" + strings.Repeat("x", 1000)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := filepath.Join(t.TempDir(), tc.name)
			if err := os.WriteFile(f, []byte(tc.contents), 0o644); err != nil {
				t.Fatal(err)
			}
			out, err := exec.Command("nix-store", "--add", f).CombinedOutput()
			if err != nil {
				t.Fatalf("nix-store --add: %v: %s", err, out)
			}
			if got, want := SourcePath(tc.name, []byte(tc.contents)), strings.TrimSpace(string(out)); got != want {
				t.Errorf("SourcePath = %s, nix-store --add = %s", got, want)
			}
		})
	}
}
