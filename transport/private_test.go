package transport

import (
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/nix-hive/nix-hive/internal/testenv"
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

// Several files go through one stage at once: the stage is 0700, each
// file has no more than its mode's owner bits until it is committed,
// then lands whole with its mode; a discarded one leaves nothing; the
// stage goes once they are done.
func TestStageManyFiles(t *testing.T) {
	c := serveSFTP(t)
	dir := t.TempDir()
	s, err := NewStage(c, dir)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(s.dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("stage %s: %v %v, want 0700", s.dir, fi, err)
	}
	modes := []fs.FileMode{0o400, 0o440, 0o644, 0o600}
	files := make([]*PrivateFile, len(modes))
	for i, mode := range modes {
		if files[i], err = s.Create(filepath.Join(dir, "k"+strconv.Itoa(i)), mode); err != nil {
			t.Fatal(err)
		}
		if filepath.Dir(files[i].Name()) != s.dir {
			t.Errorf("%s is not in the stage %s", files[i].Name(), s.dir)
		}
	}
	gone, err := s.Create(filepath.Join(dir, "gone"), 0o400)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := gone.Write([]byte("never lands")); err != nil {
		t.Fatal(err)
	}
	gone.Discard()
	var wg sync.WaitGroup
	for i, f := range files {
		if fi, err := os.Stat(f.Name()); err != nil || fi.Mode().Perm() != modes[i]&0o700 {
			t.Errorf("in flight, %s: %v %v, want %v", f.Name(), fi, err, modes[i]&0o700)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := f.Write([]byte("value " + strconv.Itoa(i))); err != nil {
				t.Error(err)
			}
			if err := f.Commit(modes[i]); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	s.Remove()
	for i, mode := range modes {
		p := filepath.Join(dir, "k"+strconv.Itoa(i))
		b, err := os.ReadFile(p)
		fi, _ := os.Stat(p)
		if err != nil || string(b) != "value "+strconv.Itoa(i) || fi.Mode().Perm() != mode {
			t.Errorf("%s: %q %v %v, want its value with mode %v", p, b, fi, err, mode)
		}
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != len(modes) {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Errorf("%s holds %s; want the committed files alone", dir, strings.Join(names, " "))
	}
}

// SetOwner sends nothing for a file its create already gave the owner
// and the mode (the stage's probe says so), and one request where the
// owner or the mode differ, or where a umask took bits the probe did not
// see asked. Against pkg/sftp's server in this process, as root.
func TestSetOwnerSkipsWhatTheCreateGave(t *testing.T) {
	if os.Getuid() != 0 {
		testenv.Missing(t, "root, to chown (run the tests as root)")
	}
	for _, tt := range []struct {
		name     string
		umask    int
		first    fs.FileMode // the stage's first file, probed
		mode     fs.FileMode
		uid      int
		requests int64 // SetOwner's
		want     fs.FileMode
	}{
		{"root's 0400, as created", 0o022, 0o400, 0o400, 0, 0, 0o400},
		{"0600 after a 0600 probe", 0o022, 0o600, 0o600, 0, 0, 0o600},
		{"group bits need a request", 0o022, 0o400, 0o440, 0, 1, 0o440},
		{"another owner needs a request", 0o022, 0o400, 0o400, 65534, 1, 0o400},
		{"write bits the probe never asked", 0o022, 0o400, 0o600, 0, 1, 0o600},
		{"a umask that took owner bits", 0o277, 0o600, 0o600, 0, 1, 0o600},
	} {
		t.Run(tt.name, func(t *testing.T) {
			old := syscall.Umask(tt.umask)
			defer syscall.Umask(old)
			c := serveSFTP(t)
			dir := t.TempDir()
			s, err := NewStage(c, dir)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Remove()
			probe, err := s.Create(filepath.Join(dir, "first"), tt.first)
			if err != nil {
				t.Fatal(err)
			}
			probe.Discard()
			f, err := s.Create(filepath.Join(dir, "key"), tt.mode)
			if err != nil {
				t.Fatal(err)
			}
			f.Write([]byte("v"))
			before := c.modes.sent
			c.modes.sent = new(atomic.Int64)
			err = f.SetOwner(tt.uid, tt.uid, tt.mode)
			n := c.modes.sent.Load()
			c.modes.sent = before
			if err != nil {
				t.Fatal(err)
			}
			if n != tt.requests {
				t.Errorf("SetOwner sent %d requests, want %d", n, tt.requests)
			}
			if err := f.Commit(tt.mode); err != nil {
				t.Fatal(err)
			}
			fi, err := os.Stat(filepath.Join(dir, "key"))
			if err != nil {
				t.Fatal(err)
			}
			if st := fi.Sys().(*syscall.Stat_t); fi.Mode().Perm() != tt.want || int(st.Uid) != tt.uid || int(st.Gid) != tt.uid {
				t.Errorf("key is %v %d:%d, want %v %d:%d", fi.Mode().Perm(), st.Uid, st.Gid, tt.want, tt.uid, tt.uid)
			}
		})
	}
}
