package transport

import (
	"bytes"
	"context"
	"testing"
)

func TestPidFilter(t *testing.T) {
	tests := []struct {
		name    string
		writes  []string
		wantOut string
		wantPID int
	}{
		{"marker then output", []string{"nix-hive-pid:42\nerr\n"}, "err\n", 42},
		{"marker split across writes", []string{"nix-hi", "ve-pid:4", "2\ner", "r\n"}, "err\n", 42},
		{"no marker", []string{"boom\n"}, "boom\n", 0},
		{"short non-marker", []string{"n", "o\n"}, "no\n", 0},
		{"marker prefix, bad number", []string{"nix-hive-pid:x\nrest"}, "nix-hive-pid:x\nrest", 0},
		{"marker only once", []string{"nix-hive-pid:7\n", "nix-hive-pid:8\n"}, "nix-hive-pid:8\n", 7},
		{"nothing", nil, "", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			f := &pidFilter{w: &out, ready: make(chan struct{})}
			for _, w := range tt.writes {
				if n, err := f.Write([]byte(w)); err != nil || n != len(w) {
					t.Fatalf("Write(%q) = %d, %v", w, n, err)
				}
			}
			if out.String() != tt.wantOut {
				t.Errorf("passed on %q; want %q", out.String(), tt.wantOut)
			}
			ctx, cancel := context.WithCancel(context.Background())
			cancel() // an undecided filter must not block processGroup
			if pid := f.processGroup(ctx); pid != tt.wantPID {
				t.Errorf("pid = %d; want %d", pid, tt.wantPID)
			}
		})
	}
}
