package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// hostSide measures what a command costs this machine as the deploy host,
// apart from the lab hosts that share its cores: the benchmark moves
// itself into a CPU-accounting cgroup of its own for the command's run,
// so that every process started meanwhile (nix-hive, the nix and ssh it
// runs; the script's ssh clients and the ControlMaster processes they
// leave behind, which no wait reaps) is counted there, and the lab's
// hosts, started before and by their own sshd, are not. On a real fleet
// each host brings its own CPU; this is the part that does not scale
// out.
type hostSide struct {
	dir    string // the cgroup's directory
	parent string // the cgroup the benchmark came from
	usage  func(dir string) (time.Duration, error)
}

// newHostSide makes the cgroup: cgroup v1's cpuacct where it is mounted
// (Debian's default on this lab), else a cgroup v2 directory (cpu.stat).
func newHostSide() (*hostSide, error) {
	name := fmt.Sprintf("nix-hive-bench-fleet-%d", os.Getpid())
	for _, c := range []struct {
		root  string
		probe string
		usage func(string) (time.Duration, error)
	}{
		{"/sys/fs/cgroup/cpuacct", "cpuacct.usage", v1Usage},
		{"/sys/fs/cgroup", "cgroup.controllers", v2Usage},
		{"/sys/fs/cgroup/unified", "cgroup.controllers", v2Usage},
	} {
		if _, err := os.Stat(filepath.Join(c.root, c.probe)); err != nil {
			continue
		}
		parent, err := ownCgroup(c.root)
		if err != nil {
			return nil, err
		}
		dir := filepath.Join(c.root, name)
		if err := os.Mkdir(dir, 0o755); err != nil {
			return nil, fmt.Errorf("make cgroup %s: %w", dir, err)
		}
		h := &hostSide{dir: dir, parent: parent, usage: c.usage}
		if _, err := h.usage(dir); err != nil {
			os.Remove(dir)
			return nil, err
		}
		return h, nil
	}
	return nil, errors.New("no cgroup CPU accounting (cpuacct or cgroup v2) mounted")
}

// ownCgroup is the directory of this process's cgroup under root.
func ownCgroup(root string) (string, error) {
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return "", err
	}
	rel, ok := cgroupOf(string(b), strings.HasSuffix(root, "/cpuacct"))
	if !ok {
		return "", fmt.Errorf("/proc/self/cgroup names no cgroup under %s", root)
	}
	return filepath.Join(root, rel), nil
}

// cgroupOf is the path, in /proc/PID/cgroup's text, of the cpuacct
// hierarchy's cgroup (v1) or of the unified one's.
func cgroupOf(text string, v1 bool) (string, bool) {
	for _, l := range strings.Split(strings.TrimSpace(text), "\n") {
		f := strings.SplitN(l, ":", 3)
		if len(f) != 3 {
			continue
		}
		if (v1 && slices.Contains(strings.Split(f[1], ","), "cpuacct")) || (!v1 && f[0] == "0" && f[1] == "") {
			return f[2], true
		}
	}
	return "", false
}

// run runs fn with the benchmark in the cgroup and returns the CPU the
// cgroup's processes used meanwhile, less the benchmark's own.
func (h *hostSide) run(fn func() error) (time.Duration, error) {
	u0, err := h.usage(h.dir)
	if err != nil {
		return 0, err
	}
	if err := h.move(h.dir); err != nil {
		return 0, err
	}
	self0 := selfCPU()
	ferr := fn()
	self := selfCPU() - self0
	if err := h.move(h.parent); err != nil {
		return 0, errors.Join(ferr, err)
	}
	u1, err := h.usage(h.dir)
	if err != nil {
		return 0, errors.Join(ferr, err)
	}
	return max(0, u1-u0-self), ferr
}

// move puts every thread of this process into the cgroup dir.
func (h *hostSide) move(dir string) error {
	p := filepath.Join(dir, "cgroup.procs")
	if err := os.WriteFile(p, []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		return fmt.Errorf("move the benchmark to %s: %w", dir, err)
	}
	return nil
}

// close removes the cgroup, first moving out what still runs in it
// (the script's ControlMasters, which outlive it by ControlPersist).
func (h *hostSide) close() error {
	b, _ := os.ReadFile(filepath.Join(h.dir, "cgroup.procs"))
	for _, pid := range strings.Fields(string(b)) {
		os.WriteFile(filepath.Join(h.parent, "cgroup.procs"), []byte(pid), 0o644)
	}
	if err := os.Remove(h.dir); err != nil {
		return fmt.Errorf("remove cgroup: %w", err)
	}
	return nil
}

func v1Usage(dir string) (time.Duration, error) {
	b, err := os.ReadFile(filepath.Join(dir, "cpuacct.usage"))
	if err != nil {
		return 0, err
	}
	ns, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%s/cpuacct.usage: %w", dir, err)
	}
	return time.Duration(ns), nil
}

func v2Usage(dir string) (time.Duration, error) {
	b, err := os.ReadFile(filepath.Join(dir, "cpu.stat"))
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "usage_usec "); ok {
			us, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("%s/cpu.stat: %w", dir, err)
			}
			return time.Duration(us) * time.Microsecond, nil
		}
	}
	return 0, fmt.Errorf("%s/cpu.stat has no usage_usec", dir)
}
