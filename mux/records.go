package mux

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nix-hive/nix-hive/transport"
)

// Every holder keeps a record of itself beside its socket, SOCKET-base.PID.json,
// from when it listens until it ends: which hive it belongs to, which
// version of it (ConfigSum) it serves, and where it logs. That is how a
// command finds the holders of its hive (mux check, mux stop) even once
// one has been retired and lets go of the socket, and how it tells a
// holder of an earlier version of the hive from the current one without
// asking it.

// Record is a holder's record.
type Record struct {
	Pid  int    `json:"pid"`
	Hive string `json:"hive"`
	// ConfigSum names the version of the hive's endpoints and client
	// policy it serves.
	ConfigSum string    `json:"config"`
	Socket    string    `json:"socket"`
	Log       string    `json:"log,omitempty"`
	Started   time.Time `json:"started"`
	// Retired: a command found the hive changed; the holder no longer
	// listens, and ends when the commands still using it do.
	Retired bool `json:"retired,omitempty"`

	file string // the record's own path
}

// recordPath is the record of the holder with pid listening at sock.
func recordPath(sock string, pid int) string {
	return strings.TrimSuffix(sock, ".sock") + "." + strconv.Itoa(pid) + ".json"
}

func (h Record) write() error {
	b, err := json.Marshal(h)
	if err != nil {
		return err
	}
	tmp := h.file + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, h.file)
}

// Holders are the holders that run for hive ("" for every hive of
// this user), the current one of each hive first. Records of holders
// that are gone (killed: they had no chance to clean up) are removed,
// with their logs and sockets.
func Holders(hive string) ([]Record, error) {
	dir, err := Dir(false)
	if err != nil {
		return nil, err
	}
	files, err := filepath.Glob(filepath.Join(dir, "*.json"))
	if err != nil {
		return nil, err
	}
	var out []Record
	for _, f := range files {
		h, ok := readRecord(f)
		if !ok {
			continue
		}
		if !h.alive() {
			h.remove()
			continue
		}
		if hive == "" || h.Hive == hive {
			out = append(out, h)
		}
	}
	slices.SortFunc(out, func(a, b Record) int {
		if a.Retired != b.Retired {
			if a.Retired {
				return 1
			}
			return -1
		}
		return a.Started.Compare(b.Started)
	})
	return out, nil
}

func readRecord(file string) (Record, bool) {
	b, err := os.ReadFile(file)
	if err != nil {
		return Record{}, false
	}
	var h Record
	if json.Unmarshal(b, &h) != nil || h.Pid <= 0 {
		return Record{}, false
	}
	h.file = file
	return h, true
}

// currentHolder is the record of the holder listening at sock.
func currentHolder(sock string) (Record, bool) {
	files, _ := filepath.Glob(strings.TrimSuffix(sock, ".sock") + ".*.json")
	for _, f := range files {
		if h, ok := readRecord(f); ok && !h.Retired && h.Socket == sock && h.alive() {
			return h, true
		}
	}
	return Record{}, false
}

// alive says whether h's holder still runs: its pid is a process of this
// user that was started to serve h's socket (spawn's --socket; a pid
// reused by another program, or by another hive's holder, is not).
func (h Record) alive() bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(h.Pid) + "/cmdline")
	return err == nil && bytes.Contains(b, []byte("\x00"+socketFlag+"\x00"+h.Socket+"\x00"))
}

// remove deletes what a holder that ended without cleaning up left: its
// record, its log, and its socket when no other holder answers there.
func (h Record) remove() {
	os.Remove(h.file)
	if h.Log != "" {
		os.Remove(h.Log)
	}
	if !h.Retired && !Answers(h.Socket) {
		os.Remove(h.Socket)
		os.Remove(h.Socket + ".pub")
	}
}

// retire asks the holder at sock to let go of it and end once the
// commands using it are done; it returns once the socket is free.
func retire(sock string) {
	m, err := Dial(sock, 5*time.Second)
	if err != nil {
		return
	}
	defer m.Close()
	m.client.SendRequest(muxRetire, true, nil)
}

// Stop stops h and returns once it has ended: through its socket while it
// listens, else (retired) with SIGTERM.
func (h Record) Stop() error {
	if !h.Retired {
		if m, err := Dial(h.Socket, 5*time.Second); err == nil {
			m.Stop()
			m.Close()
		}
	}
	if h.alive() {
		if err := syscall.Kill(h.Pid, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
			return fmt.Errorf("mux: stop pid %d: %w", h.Pid, err)
		}
	}
	if !waitExit(h.Pid, 10*time.Second) {
		return fmt.Errorf("mux: pid %d did not end within 10s of SIGTERM", h.Pid)
	}
	return nil
}

// waitExit waits until process pid has ended (a pidfd becomes readable
// then), at most d; it reports whether it has.
func waitExit(pid int, d time.Duration) bool {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return errors.Is(err, unix.ESRCH)
	}
	defer unix.Close(fd)
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	for deadline := time.Now().Add(d); ; {
		left := time.Until(deadline)
		if left <= 0 {
			return false
		}
		n, err := unix.Poll(fds, int(left.Milliseconds())+1)
		if n > 0 {
			return true
		}
		if err != nil && !errors.Is(err, unix.EINTR) {
			return false
		}
	}
}

// Info asks h about itself (what it holds now); a retired holder no
// longer listens, and is not asked.
func (h Record) Info() (Info, error) {
	if h.Retired {
		return Info{}, errors.New("retired: it no longer listens")
	}
	m, err := Dial(h.Socket, 5*time.Second)
	if err != nil {
		return Info{}, err
	}
	defer m.Close()
	return m.Info()
}

// Stale says whether h serves another version of cfg's hive than cfg.
func (h Record) Stale(cfg transport.Config) bool { return h.ConfigSum != configOf(cfg).sum() }
