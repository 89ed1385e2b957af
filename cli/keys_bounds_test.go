package cli_test

import (
	"bufio"
	"context"
	"crypto/sha256"
	"errors"
	"github.com/nix-hive/nix-hive/internal/testenv"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"runtime/metrics"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// hangKey adds defaults.keys.a-hang (first of every host's keys by name):
// a command whose shell writes its pid to sh.pid in the hive's directory,
// starts a child that would run for ever (a background job, which ignores
// SIGINT as a non-interactive shell's jobs do), writes that one's pid to
// child.pid and waits. attrs are more of the key's attributes.
func (k *keysLab) hangKey(attrs string) {
	k.t.Helper()
	editFile(k.t, filepath.Join(k.dir, "hive.nix"), `defaults.keys.shared = {`,
		`defaults.keys.a-hang = { command = "echo $$ >sh.pid; sleep 100000 & echo $! >child.pid; wait"; `+attrs+` };
  defaults.keys.shared = {`)
}

// hangPids waits for the hanging key's command to have started and
// returns the pids of its shell and its child.
func (k *keysLab) hangPids() (sh, child string) {
	k.t.Helper()
	read := func(name string) string {
		var s string
		err := waitFor(name, func() bool {
			b, err := os.ReadFile(filepath.Join(k.dir, name))
			s = strings.TrimSpace(string(b))
			return err == nil && strings.HasSuffix(string(b), "\n")
		})
		if err != nil {
			k.t.Fatal(err)
		}
		return s
	}
	return read("sh.pid"), read("child.pid")
}

func assertGone(t *testing.T, what string, pids ...string) {
	t.Helper()
	testenv.WaitGone(t, what, pids...)
}

// A key's command that does not end is stopped after --key-timeout, or
// the key's own timeout: the host fails saying so, the command's whole
// process group is gone, and nothing was written to the host.
func testFaultKeyCommandHangs(t *testing.T) {
	k := newKeysLab(t)
	k.hangKey("")
	code, out, errOut := k.run("keys", "upload", "--key-timeout", "1s", "app-1")
	if code == 0 || !strings.Contains(out+errOut, "key a-hang: command /bin/sh timed out after 1s") {
		t.Errorf("exit %d, want a failure saying the command timed out after 1s", code)
	}
	sh, child := k.hangPids()
	assertGone(t, "after --key-timeout", sh, child)
	if ents, _ := os.ReadDir(k.lab.Host("app-1").Path("/run/keys")); len(ents) != 0 {
		t.Errorf("app-1 has %d entries in /run/keys although a key of its could not be had", len(ents))
	}

	// The key's own timeout wins over the flag's.
	for _, f := range []string{"sh.pid", "child.pid"} {
		os.Remove(filepath.Join(k.dir, f))
	}
	editFile(t, filepath.Join(k.dir, "hive.nix"), `wait"; `, `wait"; timeout = "2s"; `)
	code, out, errOut = k.run("keys", "upload", "--key-timeout", "1h", "app-1")
	if code == 0 || !strings.Contains(out+errOut, "key a-hang: command /bin/sh timed out after 2s") {
		t.Errorf("exit %d, want a failure saying the command timed out after 2s (the key's timeout)", code)
	}
	sh, child = k.hangPids()
	assertGone(t, "after the key's timeout", sh, child)
	addFaultRow(faultRow{fault: "a key's command hangs (--key-timeout, the key's timeout)", exit: code, outcome: "failed: timed out after 2s",
		hosts: "no key written", badExit: code == 0})
}

// Ctrl-C (SIGINT to nix-hive's process group, as a terminal sends it)
// while a key's command runs: the host fails saying the command was
// interrupted, not that it exited -1, and the command's process group,
// children included, is gone.
func testFaultKeyCommandInterrupted(t *testing.T) {
	k := newKeysLab(t)
	k.hangKey("")
	r := k.startProcess("keys", "upload", "app-1")
	sh, child := k.hangPids()
	if err := syscall.Kill(-r.cmd.Process.Pid, syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	sent := time.Now()
	code := r.wait()
	if code != 130 {
		t.Errorf("exit %d after Ctrl-C, want 130", code)
	}
	out := r.stdout.String() + r.stderr.String()
	if !strings.Contains(out, "key a-hang: command /bin/sh was interrupted") || strings.Contains(out, "exited -1") {
		t.Errorf("want the key's command named as interrupted:\n%s", out)
	}
	assertGone(t, "after Ctrl-C", sh, child)
	addFaultRow(faultRow{fault: "Ctrl-C while a key's command runs", exit: code, outcome: "interrupted, command stopped", hosts: "-",
		badExit: code == 0, took: r.ended.Sub(sent), interrupt: true, finished: true})
}

// uploadingBig reports whether a staging directory in dir holds a file
// of a MiB or more: a big key is being written, not the small ones.
func uploadingBig(dir string) bool {
	files, _ := filepath.Glob(filepath.Join(dir, ".nix-hive-*", "*"))
	for _, f := range files {
		if fi, err := os.Stat(f); err == nil && fi.Size() >= 1<<20 {
			return true
		}
	}
	return false
}

// stages lists the staging directories of uploads in dir on the host.
func stages(t *testing.T, dir string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, ".nix-hive-*"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// nix-hive killed (SIGKILL) half-way through a key upload. Over sftp the
// staging directory stays, 0700, with part of the value in it (and the
// files of the host's other keys that were on their way); through
// the shell the program on the host sees the value end short and keeps
// the old key. Either way the key is the old one, whole. The next upload
// removes the staging directory (its writer is gone) and puts the new key
// in place.
func testFaultKeyUploadKilled(t *testing.T) {
	k := newKeysLab(t)
	if code, _, _ := k.run("keys", "upload", "app-1", "app-2"); code != 0 {
		t.Fatal("first upload failed")
	}
	line := k.canary + "-new-tls\n"
	big := strings.Repeat(line, 64<<20/len(line)) // 64 MiB: the upload takes a while
	writeFile(t, filepath.Join(k.secrets, "tls"), big)
	nobody, nogroup := lookupID(t, "passwd", "nobody"), lookupID(t, "group", "nogroup")
	for _, host := range []string{"app-1", "app-2"} { // over sftp, through the shell
		t.Run(host, func(t *testing.T) {
			h := k.lab.Host(host)
			dir := h.Path("/run/keys")
			for attempt := 1; ; attempt++ {
				r := k.startProcess("keys", "upload", host)
				if err := waitFor("the big key's upload to be under way on "+host, func() bool { return uploadingBig(dir) }); err != nil {
					t.Fatal(err)
				}
				r.signal(syscall.SIGKILL)
				r.wait()
				// The host's side of the upload (the sftp server, the
				// shell program) ends when it sees the connection gone.
				err := waitFor("the upload's processes on "+host+" to end", func() bool {
					out, err := h.Exec(context.Background(), "sh", "-c",
						`if pgrep -x sftp-server || pgrep -f "mkt[e]mp -d"; then echo running; else echo ended; fi`)
					if err != nil {
						t.Fatalf("ps on %s: %v", host, err)
					}
					return strings.HasSuffix(string(out), "ended\n")
				})
				if err != nil {
					t.Fatal(err)
				}
				got, err := k.keyOn(host, "tls")
				if err == nil && got.content == big {
					if attempt == 5 {
						t.Fatal("5 uploads finished before nix-hive could be killed")
					}
					t.Logf("attempt %d: the upload finished before the kill; again", attempt)
					continue
				}
				if err != nil || got.content != k.values["tls"] {
					t.Fatalf("/run/keys/tls after the kill: %d bytes, %v; want the old key whole", len(got.content), err)
				}
				break
			}
			left := stages(t, dir)
			if host == "app-1" {
				if len(left) == 0 {
					t.Error("no staging directory left by the sftp upload: the test did not cut one off")
				}
				// The host's keys share a staging directory and go at once:
				// the small ones' files may still be in it, unrenamed.
				for _, s := range left {
					if fi, err := os.Stat(s); err != nil || fi.Mode().Perm() != 0o700 {
						t.Errorf("staging directory %s: %v %v; want 0700", s, fi, err)
					}
				}
				partial, _ := filepath.Glob(filepath.Join(dir, ".nix-hive-*", "tls"))
				if len(partial) != 1 {
					t.Errorf("the big key's partial file in a staging directory: %s; want one", partial)
				} else if fi, err := os.Stat(partial[0]); err != nil || fi.Mode().Perm() != 0o400 || fi.Size() >= int64(len(big)) {
					t.Errorf("%s: %v %v, want part of the value with the owner bits of the key's mode (0400)", partial[0], fi, err)
				}
			} else if len(left) != 0 {
				t.Errorf("the shell program left %s behind", left)
			}
			t.Logf("left after the kill: %s", left)

			if code, _, _ := k.run("keys", "upload", host); code != 0 {
				t.Fatal("the upload after the kill failed")
			}
			if left := stages(t, dir); len(left) != 0 {
				t.Errorf("staging directories remain after the next upload: %s", left)
			}
			got, err := k.keyOn(host, "tls")
			wrong := 0
			if want := (keyFile{big, 0o440, nobody, nogroup}); err != nil || got != want {
				wrong = 1
				t.Errorf("/run/keys/tls: %d bytes %v %d:%d, %v; want the new key, 0440 nobody:nogroup", len(got.content), got.mode, got.owner, got.grup, err)
			}
			how := map[string]string{"app-1": "over sftp", "app-2": "through the shell"}[host]
			addFaultRow(faultRow{fault: "nix-hive SIGKILLed during a key upload " + how, outcome: "old key whole; staging removed by the next upload",
				hosts: host + " new key", wrong: wrong})
		})
	}
}

// Uploads that hold no deploy lock (scp) may share a directory with a key
// upload: a staging directory whose writer still runs is not the key
// upload's to remove, and that upload completes.
func TestKeysUploadSparesLiveStaging(t *testing.T) {
	k := newKeysLab(t)
	if code, _, _ := k.run("keys", "upload", "app-1"); code != 0 {
		t.Fatal("first upload failed")
	}
	h := k.lab.Host("app-1")
	dir := h.Path("/run/keys")
	big := strings.Repeat("not a secret, just long\n", 64<<20/24)
	writeFile(t, filepath.Join(k.dir, "big"), big)
	var r *running
	for attempt := 1; ; attempt++ {
		r = k.startProcess("scp", filepath.Join(k.dir, "big"), "app-1:/run/keys/other")
		if err := waitFor("the copy to start", func() bool { return uploading(dir) }); err != nil {
			t.Fatal(err)
		}
		r.signal(syscall.SIGSTOP)
		if uploading(dir) {
			break
		}
		r.signal(syscall.SIGCONT)
		r.wait()
		if attempt == 5 {
			t.Fatal("5 copies finished before they could be stopped")
		}
		t.Logf("attempt %d: the copy finished before it was stopped; again", attempt)
	}
	live := stages(t, dir)
	code, _, _ := k.run("keys", "upload", "app-1")
	r.signal(syscall.SIGCONT)
	if code != 0 {
		t.Error("the key upload failed")
	}
	for _, s := range live {
		if _, err := os.Stat(s); err != nil {
			t.Errorf("the key upload removed a live copy's staging directory: %v", err)
		}
	}
	if code := r.wait(); code != 0 {
		t.Errorf("the copy failed (exit %d)", code)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "other")); err != nil || string(b) != big {
		t.Errorf("/run/keys/other: %d bytes, %v; want the copy whole", len(b), err)
	}
	if left := stages(t, dir); len(left) != 0 {
		t.Errorf("staging directories remain: %s", left)
	}
}

// memoryDuring runs f and returns how far the live heap rose above where
// it was, sampled (so the peak is at least that), and how much more
// memory the runtime took from the system (which stays taken, so an
// earlier test in this process may have left enough for f).
func memoryDuring(f func()) (heap, sys uint64) {
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	sample := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	var peak uint64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(2 * time.Millisecond)
		defer t.Stop()
		for {
			metrics.Read(sample)
			peak = max(peak, sample[0].Value.Uint64())
			select {
			case <-stop:
				return
			case <-t.C:
			}
		}
	}()
	f()
	close(stop)
	wg.Wait()
	runtime.ReadMemStats(&after)
	return peak - min(peak, before.HeapAlloc), after.Sys - before.Sys
}

// writeLines fills file p with line repeated to size bytes, written a
// line at a time (the test holds no more of it than the upload may), and
// returns the content's SHA-256.
func writeLines(t *testing.T, p, line string, size int) [sha256.Size]byte {
	t.Helper()
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	w := bufio.NewWriter(io.MultiWriter(f, h))
	for n := 0; n+len(line) <= size; n += len(line) {
		w.WriteString(line)
	}
	if err := errors.Join(w.Flush(), f.Close()); err != nil {
		t.Fatal(err)
	}
	return [sha256.Size]byte(h.Sum(nil))
}

// fileSum is the SHA-256 of file p, read in chunks.
func fileSum(p string) ([sha256.Size]byte, error) {
	f, err := os.Open(p)
	if err != nil {
		return [sha256.Size]byte{}, err
	}
	defer f.Close()
	h := sha256.New()
	_, err = io.Copy(h, f)
	return [sha256.Size]byte(h.Sum(nil)), err
}

// A 256 MiB key file goes to a host over sftp, and to one without sftp
// through the shell, while the heap of the process running the upload
// (this one, through cli.Main) grows by a small part of it: the key is
// streamed from the file, never held whole. The heap is sampled with the
// garbage not yet collected in it, so it is the memory the upload
// occupies, not only what it keeps.
func TestKeysStreamMemory(t *testing.T) {
	k := newKeysLab(t)
	const size = 256 << 20
	want := writeLines(t, filepath.Join(k.secrets, "tls"), k.canary+"-large-tls\n", size)
	mib := func(n uint64) float64 { return float64(n) / (1 << 20) }
	for _, host := range []string{"app-1", "app-2"} {
		var code int
		heap, sys := memoryDuring(func() { code, _, _ = k.run("keys", "upload", host) })
		t.Logf("%s (%s), a %.0f MiB key: the heap rose %.1f MiB at most, memory from the system %.1f MiB",
			host, map[string]string{"app-1": "sftp", "app-2": "shell"}[host], mib(size), mib(heap), mib(sys))
		if code != 0 {
			t.Fatalf("upload to %s failed", host)
		}
		if heap > size/8 {
			t.Errorf("%s: the heap grew by %.0f MiB for a %.0f MiB key: it was held, not streamed", host, mib(heap), mib(size))
		}
		p := k.lab.Host(host).Path("/run/keys/tls")
		got, err := fileSum(p)
		fi, serr := os.Stat(p)
		if err != nil || serr != nil || got != want || fi.Mode().Perm() != 0o440 {
			t.Errorf("%s /run/keys/tls: not the key whole with mode 0440 (%v %v)", host, err, serr)
		}
	}
}
