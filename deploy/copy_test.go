package deploy

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nix-hive/nix-hive/nixcmd"
)

// A nix copy whose ssh never got in is tried once more (nothing was
// copied); any other failure, or a second failed connection, is not.
// The nix here is a script standing in for the real one, which the lab
// tests run: it fails as nix 2.8 and 2.24 do when ssh cannot connect.
func TestCopyRetriesAConnectFailureOnce(t *testing.T) {
	tests := []struct {
		mode    string
		runs    string
		wantErr string
	}{
		{"flaky", "2", ""},
		{"down", "2", "nix copy to app-1: cannot connect over SSH (tried twice): ssh: connect to host 127.0.0.9 port 22: Connection timed out"},
		{"other", "1", "is not valid"},
	}
	for _, tt := range tests {
		t.Run(tt.mode, func(t *testing.T) {
			dir := t.TempDir()
			count := filepath.Join(dir, "runs")
			script := `#!/bin/sh
n=$(cat "$COUNT" 2>/dev/null || echo 0)
n=$((n+1))
echo $n >"$COUNT"
case "$MODE:$n" in
flaky:1|down:*)
  echo "ssh: connect to host 127.0.0.9 port 22: Connection timed out" >&2
  echo "error: cannot connect to 'app-1'" >&2
  exit 1 ;;
other:*)
  echo "error: path '/nix/store/x' is not valid" >&2
  exit 1 ;;
esac
`
			if err := os.WriteFile(filepath.Join(dir, "nix"), []byte(script), 0o755); err != nil {
				t.Fatal(err)
			}
			t.Setenv("PATH", dir+string(os.PathListSeparator)+os.Getenv("PATH"))
			c := &NixCopier{Nix: &nixcmd.Runner{Env: []string{"COUNT=" + count, "MODE=" + tt.mode}}}
			err := c.Copy(context.Background(), "app-1", []string{"/nix/store/x"})
			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("Copy = %v; want success on the second try", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Errorf("Copy = %v; want %q", err, tt.wantErr)
			}
			if b, _ := os.ReadFile(count); strings.TrimSpace(string(b)) != tt.runs {
				t.Errorf("nix ran %s times; want %s", strings.TrimSpace(string(b)), tt.runs)
			}
		})
	}
}
