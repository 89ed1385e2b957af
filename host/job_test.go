package host

import "testing"

func TestParseJobState(t *testing.T) {
	tests := []struct {
		out  string
		want JobState
	}{
		{"running\n", JobState{Phase: "running"}},
		{"activated\n", JobState{Phase: "activated"}},
		{"done ok \n", JobState{Phase: "done", Status: "ok"}},
		{"done rolled-back not confirmed within 30s\nnix-hive: returning\n", JobState{Phase: "done", Status: "rolled-back", Reason: "not confirmed within 30s", Log: "nix-hive: returning"}},
		{"gone\n", JobState{Phase: "gone"}},
	}
	for _, tt := range tests {
		if got := parseJobState(tt.out); got != tt.want {
			t.Errorf("parseJobState(%q) = %+v, want %+v", tt.out, got, tt.want)
		}
	}
}
