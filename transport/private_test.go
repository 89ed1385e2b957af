package transport

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// An upload into a directory removes the staging directories there whose
// writer is gone (a pid that no longer runs, or another boot), and keeps
// those of uploads that still run and anything not named as a staging
// directory. The server here is pkg/sftp's, in this process: /proc/self
// is this process, so a staging directory carrying its pid is live.
func TestCreatePrivateRemovesStaleStages(t *testing.T) {
	c := serveSFTP(t)
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		t.Fatal(err)
	}
	boot := string(b[:8])
	ended := exec.Command("true")
	if err := ended.Run(); err != nil {
		t.Fatal(err)
	}
	me, dead := strconv.Itoa(os.Getpid()), strconv.Itoa(ended.Process.Pid)
	dir := t.TempDir()
	entries := map[string]bool{ // name: kept
		".nix-hive-stage-" + boot + "-" + me + "-a1b2c3":   true,  // a live upload's
		".nix-hive-stage-" + boot + "-" + dead + "-a1b2c3": false, // its writer ended
		".nix-hive-stage-00000000-" + me + "-a1b2c3":       false, // from another boot
		".nix-hive-stage-" + boot + "-notapid-a1b2c3":      true,  // not a staging name
		".nix-hive-0123456789ab":                           true,  // owner unknown
		"unrelated":                                        true,
	}
	for name := range entries {
		if err := os.Mkdir(filepath.Join(dir, name), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name, "partial"), []byte("part of a value"), 0o400); err != nil {
			t.Fatal(err)
		}
	}
	f, err := CreatePrivate(c, filepath.Join(dir, "key"), 0o400)
	if err != nil {
		t.Fatal(err)
	}
	stage := filepath.Base(filepath.Dir(f.Name()))
	if want := ".nix-hive-stage-" + boot + "-" + me + "-"; !strings.HasPrefix(stage, want) {
		t.Errorf("the staging directory is %s, want one named %s...", stage, want)
	}
	if _, err := f.Write([]byte("value")); err != nil {
		t.Fatal(err)
	}
	if err := f.Commit(0o400); err != nil {
		t.Fatal(err)
	}
	for name, kept := range entries {
		_, err := os.Stat(filepath.Join(dir, name))
		if kept && err != nil {
			t.Errorf("%s was removed", name)
		}
		if !kept && err == nil {
			t.Errorf("%s was left", name)
		}
	}
	if got, err := os.ReadFile(filepath.Join(dir, "key")); err != nil || string(got) != "value" {
		t.Errorf("key: %q %v", got, err)
	}
	if _, err := os.Stat(filepath.Join(dir, stage)); err == nil {
		t.Errorf("the upload's own staging directory %s is left", stage)
	}
}
