// Command keys measures `nix-hive keys upload` at the size of the fleet
// wire's published benchmark deploys (about 20 hosts with 200 keys each):
// every lab host gets its keys, small texts and some from commands, and
// the same keys go up by hand, one tar stream per host over ssh, in the
// same run.
//
//	go run ./bench/keys [-hosts 20] [-keys 200] [-command-share 0.1] [-runs 3]
//
// See bench/README.md for what it runs and how to read the output.
package main

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"os/user"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nix-hive/nix-hive/bench/internal/harness"
	"github.com/nix-hive/nix-hive/lab"
)

type options struct {
	hosts    int
	keys     int
	share    float64
	runs     int
	parallel int
	keep     bool
	verbose  bool
}

func main() {
	var o options
	flag.IntVar(&o.hosts, "hosts", 20, "lab hosts")
	flag.IntVar(&o.keys, "keys", 200, "keys per host")
	flag.Float64Var(&o.share, "command-share", 0.1, "share of the keys whose value comes from a command (0.1: every 10th), the rest are texts")
	flag.IntVar(&o.runs, "runs", 3, "measure each side this many times (alternating) and report the median")
	flag.IntVar(&o.parallel, "parallel", 32, "hosts worked on at once: nix-hive keys upload --parallel (its default is 32) and the tar streams'")
	flag.BoolVar(&o.keep, "keep", false, "keep the work directory (logs, hive) instead of removing it")
	flag.BoolVar(&o.verbose, "v", false, "copy every command's output to stderr")
	flag.Parse()
	harness.Main("bench/keys", func(ctx context.Context) error { return run(ctx, o) })
}

// The goal of issue 28 and the published anchors it comes from.
const (
	goal       = 5 * time.Second
	anchorFrom = "wire's bench/README.md: a deploy of ~20 nodes x 200 keys (80% pre-, 20% post-activation) in a NixOS VM test, with hyperfine"
	anchors    = "colmena 125.9 s, wire 5.5 s (4.8 s with --experimental-nix-client)"
)

type bench struct {
	o      options
	s      shape
	lab    *lab.Lab
	w      *harness.Workspace
	hive   string
	sshCfg string         // nix-hive ssh-config's output, for the tar streams
	ids    map[string]int // user and group names of the keys -> ids
}

// sample is one timed run of one side.
type sample struct {
	wall time.Duration
	// land is, per host, when its first and its last key file landed
	// (their ctime: the rename, or tar's last chmod), since the start.
	land     map[string][2]time.Duration
	cpu      time.Duration // this machine's side: the tool and what it ran
	conns    int           // nix-hive's SSH connections and sessions (-v)
	sessions int
}

func run(ctx context.Context, o options) (err error) {
	if o.hosts < 1 || o.runs < 1 || o.parallel < 1 {
		return errors.New("need -hosts >= 1, -runs >= 1 and -parallel >= 1")
	}
	s, err := newShape(o.keys, o.share)
	if err != nil {
		return err
	}
	if err := harness.Check("tar", "printf"); err != nil {
		return err
	}
	root, err := harness.ModuleRoot(ctx)
	if err != nil {
		return err
	}
	b := &bench{o: o, s: s}
	if b.ids, err = ownerIDs(); err != nil {
		return err
	}
	b.w, err = harness.NewWorkspace(ctx, "nix-hive-bench-keys-", root, o.keep, o.verbose)
	defer func() { err = errors.Join(err, b.w.Cleanup()) }()
	if err != nil {
		return err
	}
	start := time.Now()
	if b.lab, err = lab.Start(ctx, lab.Config{Hosts: o.hosts}); err != nil {
		return fmt.Errorf("start lab: %w", err)
	}
	b.w.OnCleanup(b.lab.Close)
	fmt.Fprintf(os.Stderr, "lab of %d hosts up in %.1fs\n", o.hosts, time.Since(start).Seconds())
	if err := b.prepare(ctx, root); err != nil {
		return err
	}
	var hive, tars []sample
	for i := range o.runs {
		// Alternate, so a slow phase of the machine hits both sides.
		order := []bool{true, false}
		if i%2 == 1 {
			order = []bool{false, true}
		}
		for _, nixHive := range order {
			if err := b.clear(); err != nil {
				return err
			}
			if nixHive {
				s, err := b.nixHive(ctx, i+1)
				if err != nil {
					return err
				}
				hive = append(hive, s)
			} else {
				s, err := b.tar(ctx, i+1)
				if err != nil {
					return err
				}
				tars = append(tars, s)
			}
		}
		fmt.Fprintf(os.Stderr, "run %d: nix-hive keys upload %.2fs, tar over ssh %.2fs\n", i+1, hive[i].wall.Seconds(), tars[i].wall.Seconds())
	}
	b.report(os.Stdout, hive, tars)
	return nil
}

// prepare writes the hive, the ssh config the tar streams use, and
// evaluates the hive once (untimed: the first evaluation fills caches
// every later one finds).
func (b *bench) prepare(ctx context.Context, root string) error {
	var err error
	if b.hive, err = harness.WriteHive(ctx, root, b.w.Dir, b.lab, hiveNix(b.s), nil); err != nil {
		return err
	}
	out, err := b.w.Logs.Run(ctx, "setup", nil, b.w.Bin, "-c", b.hive, "ssh-config")
	if err != nil {
		return err
	}
	b.sshCfg = filepath.Join(b.w.Dir, "ssh_config")
	if err := os.WriteFile(b.sshCfg, out, 0o644); err != nil {
		return fmt.Errorf("write %s: %w", b.sshCfg, err)
	}
	last := b.lab.Hosts[len(b.lab.Hosts)-1].Name
	if _, err := b.w.Logs.Run(ctx, "setup", nil, "ssh", "-F", b.sshCfg, "--", last, "true"); err != nil {
		return fmt.Errorf("the ssh config nix-hive wrote does not reach %s: %w", last, err)
	}
	if _, err := b.w.Logs.Run(ctx, "setup", nil, b.w.Bin, "-c", b.hive, "keys", "list"); err != nil {
		return err
	}
	return nil
}

// ownerIDs are the ids of the keys' users and groups, from this
// machine's databases, which the lab's hosts share.
func ownerIDs() (map[string]int, error) {
	ids := map[string]int{"root": 0}
	u, err := user.Lookup("nobody")
	if err != nil {
		return nil, fmt.Errorf("the keys' user: %w", err)
	}
	g, err := user.LookupGroup("nogroup")
	if err != nil {
		return nil, fmt.Errorf("the keys' group: %w", err)
	}
	ids["nobody"], _ = strconv.Atoi(u.Uid)
	ids["nogroup"], _ = strconv.Atoi(g.Gid)
	return ids, nil
}

// clear removes every host's keys, so that each run starts where the
// first did: no key directory.
func (b *bench) clear() error {
	for _, h := range b.lab.Hosts {
		if err := os.RemoveAll(h.Path(keysDir)); err != nil {
			return err
		}
	}
	return nil
}

// nixHive times `nix-hive -v keys upload '*'`.
func (b *bench) nixHive(ctx context.Context, n int) (sample, error) {
	logName := fmt.Sprintf("nix-hive-%d", n)
	var s sample
	err := b.timed(ctx, &s, func() error {
		_, err := b.w.Logs.Run(ctx, logName, nil, b.w.Bin, "-v", "-c", b.hive, "keys", "upload", "--parallel", strconv.Itoa(b.o.parallel), "*")
		return err
	})
	if err == nil {
		s.conns, s.sessions, err = sshCounts(filepath.Join(b.w.Logs.Logs, logName+".log"))
	}
	if err != nil {
		return s, fmt.Errorf("nix-hive keys upload, run %d: %w", n, err)
	}
	return s, nil
}

// tar times the keys going up by hand: for each host (parallel at
// once), its command keys run here, one after the other, and all its keys
// go into a tar stream, piped to `ssh -F SSH_CONFIG HOST tar -x`.
func (b *bench) tar(ctx context.Context, n int) (sample, error) {
	var s sample
	err := b.timed(ctx, &s, func() error {
		var (
			wg   sync.WaitGroup
			mu   sync.Mutex
			errs []error
		)
		sem := make(chan struct{}, b.o.parallel)
		for _, h := range b.lab.Hosts {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer func() { <-sem; wg.Done() }()
				if err := b.tarHost(ctx, h.Name, fmt.Sprintf("tar-%d", n)); err != nil {
					mu.Lock()
					errs = append(errs, fmt.Errorf("%s: %w", h.Name, err))
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		return errors.Join(errs...)
	})
	if err != nil {
		return s, fmt.Errorf("tar over ssh, run %d: %w", n, err)
	}
	return s, nil
}

// tarExtract is what the tar streams run on a host: extract as root,
// keeping the archive's owners (by number) and modes.
const tarExtract = "tar -x -p --same-owner --numeric-owner -C / -f -"

func (b *bench) tarHost(ctx context.Context, host, logName string) error {
	data, err := b.archive(ctx, host)
	if err != nil {
		return err
	}
	_, err = b.w.Logs.Run(ctx, logName, bytes.NewReader(data), "ssh", "-F", b.sshCfg, "--", host, tarExtract)
	return err
}

// archive is host's keys as a tar stream: the key directories with the
// modes nix-hive gives them (see shape.dirs), then every key with its
// owner and mode.
func (b *bench) archive(ctx context.Context, host string) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	now := time.Now()
	dirs := b.s.dirs()
	for _, d := range slices.Sorted(maps.Keys(dirs)) { // parents first
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: strings.TrimPrefix(d, "/") + "/", Mode: int64(dirs[d]), ModTime: now}); err != nil {
			return nil, err
		}
	}
	for _, k := range b.s.specs(host) {
		value := []byte(k.Value)
		if k.Argv != nil {
			out, err := exec.CommandContext(ctx, k.Argv[0], k.Argv[1:]...).Output()
			if err != nil {
				return nil, fmt.Errorf("key %s: %w", k.Name, err)
			}
			value = out
		}
		hdr := &tar.Header{Typeflag: tar.TypeReg, Name: strings.TrimPrefix(k.Dest, "/"), Mode: int64(k.Mode),
			Uid: b.ids[k.User], Gid: b.ids[k.Group], Size: int64(len(value)), ModTime: now}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, err
		}
		if _, err := tw.Write(value); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// timed runs fn, fills in s's wall time and CPU, then checks every
// host's keys and reads when they landed.
func (b *bench) timed(ctx context.Context, s *sample, fn func() error) error {
	cpu0 := clientCPU()
	start := time.Now()
	err := fn()
	s.wall = time.Since(start)
	s.cpu = clientCPU() - cpu0
	if err != nil {
		return err
	}
	s.land = map[string][2]time.Duration{}
	var bad []string
	for _, h := range b.lab.Hosts {
		first, last, problems := b.check(h)
		bad = append(bad, problems...)
		s.land[h.Name] = [2]time.Duration{first.Sub(start), last.Sub(start)}
	}
	if len(bad) > 0 {
		if len(bad) > 10 {
			bad = append(bad[:10], fmt.Sprintf("and %d more", len(bad)-10))
		}
		return fmt.Errorf("the keys are not as the hive says:\n  %s", strings.Join(bad, "\n  "))
	}
	return nil
}

// clientCPU is the CPU this process and the children it has waited for
// have used: what a side spent on this machine (nix-hive and the
// commands and nix it ran; ssh, printf and the tar streams).
func clientCPU() time.Duration {
	var d time.Duration
	for _, who := range []int{syscall.RUSAGE_SELF, syscall.RUSAGE_CHILDREN} {
		var ru syscall.Rusage
		if syscall.Getrusage(who, &ru) == nil {
			d += time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
		}
	}
	return d
}

// check reads h's keys through its directories on this machine: every
// key with its content, owner and mode, the key directories root's with
// their modes, nothing else in them (no staging directory left behind). It
// returns when the first and the last key landed (their ctimes).
func (b *bench) check(h *lab.Host) (first, last time.Time, problems []string) {
	specs := b.s.specs(h.Name)
	want := map[string][]string{} // directory -> names in it
	for d, mode := range b.s.dirs() {
		fi, err := os.Lstat(h.Path(d))
		if err != nil {
			problems = append(problems, fmt.Sprintf("%s: %v", h.Name, err))
			continue
		}
		st := fi.Sys().(*syscall.Stat_t)
		if !fi.IsDir() || fi.Mode().Perm() != mode || st.Uid != 0 || st.Gid != 0 {
			problems = append(problems, fmt.Sprintf("%s: %s is %v %d:%d, want a directory %v root:root", h.Name, d, fi.Mode(), st.Uid, st.Gid, mode))
		}
		if p := path.Dir(d); p != path.Dir(keysDir) {
			want[p] = append(want[p], path.Base(d))
		}
	}
	for _, k := range specs {
		want[path.Dir(k.Dest)] = append(want[path.Dir(k.Dest)], path.Base(k.Dest))
		p := h.Path(k.Dest)
		content, err := os.ReadFile(p)
		if err != nil {
			problems = append(problems, fmt.Sprintf("%s: %v", h.Name, err))
			continue
		}
		fi, err := os.Lstat(p)
		if err != nil {
			problems = append(problems, fmt.Sprintf("%s: %v", h.Name, err))
			continue
		}
		st := fi.Sys().(*syscall.Stat_t)
		uid, gid := b.ids[k.User], b.ids[k.Group]
		switch {
		case !fi.Mode().IsRegular() || fi.Mode().Perm() != k.Mode || int(st.Uid) != uid || int(st.Gid) != gid:
			problems = append(problems, fmt.Sprintf("%s: %s is %v %d:%d, want a file %v %d:%d", h.Name, k.Dest, fi.Mode(), st.Uid, st.Gid, k.Mode, uid, gid))
		case string(content) != k.Value:
			// The values are the benchmark's own, not secrets.
			problems = append(problems, fmt.Sprintf("%s: %s holds %q, want %q", h.Name, k.Dest, content, k.Value))
		}
		ctime := time.Unix(st.Ctim.Sec, st.Ctim.Nsec)
		if first.IsZero() || ctime.Before(first) {
			first = ctime
		}
		if ctime.After(last) {
			last = ctime
		}
	}
	for d, names := range want {
		ents, err := os.ReadDir(h.Path(d))
		if err != nil {
			continue // said above
		}
		var got []string
		for _, e := range ents {
			got = append(got, e.Name())
		}
		slices.Sort(got)
		slices.Sort(names)
		if extra := without(got, names); len(extra) > 0 {
			problems = append(problems, fmt.Sprintf("%s: %s holds more than the keys: %s", h.Name, d, strings.Join(extra, " ")))
		}
	}
	return first, last, problems
}

// without is what of got is not in want (both sorted).
func without(got, want []string) []string {
	var out []string
	for _, g := range got {
		if _, found := slices.BinarySearch(want, g); !found {
			out = append(out, g)
		}
	}
	return out
}

// sshCounts reads the last "ssh: N connections (...), M sessions" line
// nix-hive -v printed into a log.
func sshCounts(log string) (conns, sessions int, err error) {
	b, err := os.ReadFile(log)
	if err != nil {
		return 0, 0, err
	}
	m := sshCountsRE.FindAllSubmatch(b, -1)
	if m == nil {
		return 0, 0, fmt.Errorf("%s: nix-hive -v printed no count of SSH connections", log)
	}
	last := m[len(m)-1]
	conns, _ = strconv.Atoi(string(last[1]))
	sessions, _ = strconv.Atoi(string(last[2]))
	return conns, sessions, nil
}

var sshCountsRE = regexp.MustCompile(`ssh: (\d+) connections \(\d+ direct, \d+ through [^)]*\), (\d+) sessions`)
