package deploy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"

	"github.com/nix-hive/nix-hive/host"
	"github.com/nix-hive/nix-hive/shell"
)

// fakeHosts is an in-memory fleet that answers the executor's remote
// programs (package host) the way job.sh and the agent do on a real host:
// locks, detached jobs with confirmation, restore. The lab tests prove the
// real programs; this proves the executor's ordering and bookkeeping
// quickly and deterministically.
type fakeHosts struct {
	mu       sync.Mutex
	changed  *sync.Cond // job states and locks
	active   map[string]string
	profile  map[string]string
	last     map[string]string
	order    []string // activations (switch-to-configuration runs), in order
	restores []string // returns to what ran before a job (restore:ID), in order
	fail     map[string]bool
	// unconfirmable hosts refuse new connections after activation, like
	// a system that broke sshd.
	unconfirmable map[string]bool
	copies        []string
	marks         []string      // "host status" of each markProgram that changed a record
	stalled       chan struct{} // when set, activations wait for it
	// pushing, when set, receives dest as a copy starts; copies to hung
	// block until cancelled.
	pushing chan string
	hung    map[string]bool
	locks   map[string]string
	jobs    map[string]*fakeJob
	// substituting counts the substitutions in flight of hosts in
	// substGate, most the highest; they wait for release to close.
	substituting, most int
	substGate          map[string]bool
	release            chan struct{}
}

type fakeJob struct {
	host, state string
	before      [2]string // active, profile
	confirmed   bool
}

func newFakeHosts() *fakeHosts {
	f := &fakeHosts{active: map[string]string{}, profile: map[string]string{}, last: map[string]string{},
		fail: map[string]bool{}, unconfirmable: map[string]bool{}, locks: map[string]string{}, jobs: map[string]*fakeJob{}}
	f.changed = sync.NewCond(&f.mu)
	return f
}

// programs are the host programs, by name, as commands carry them.
var programs = host.Programs()

// programArgs returns the arguments after "nix-hive" when cmd runs the
// program named name.
func programArgs(cmd, name string) ([]string, bool) {
	q := shell.Quote(programs[name])
	i := strings.Index(cmd, q)
	if i < 0 {
		return nil, false
	}
	words := splitWords(cmd[i+len(q):])
	return words[1:], true // words[0] is $0, "nix-hive"
}

// splitWords undoes transport.QuoteArgs.
func splitWords(s string) []string {
	var out []string
	var cur strings.Builder
	in, word := false, false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case in && c == '\'':
			in = false
		case in:
			cur.WriteByte(c)
		case c == '\'':
			in, word = true, true
		case c == '\\' && i+1 < len(s):
			i++
			cur.WriteByte(s[i])
			word = true
		case c == ' ' || c == '\n':
			if word {
				out = append(out, cur.String())
				cur.Reset()
				word = false
			}
		default:
			cur.WriteByte(c)
			word = true
		}
	}
	if word {
		out = append(out, cur.String())
	}
	return out
}

func (f *fakeHosts) Run(ctx context.Context, name, cmd string, stdin io.Reader, stdout, _ io.Writer) (int, error) {
	if args, ok := programArgs(cmd, "lock"); ok {
		return f.lock(name, args[0], stdin, stdout)
	}
	if args, ok := programArgs(cmd, "start"); ok {
		io.Copy(io.Discard, stdin)
		f.start(name, args[0], args[4:])
		fmt.Fprintln(stdout, f.follow(ctx, args[0], args[1]))
		return 0, ctx.Err()
	}
	if args, ok := programArgs(cmd, "follow"); ok {
		fmt.Fprintln(stdout, f.follow(ctx, args[0], args[1]))
		return 0, ctx.Err()
	}
	if args, ok := programArgs(cmd, "mark"); ok {
		f.mu.Lock()
		defer f.mu.Unlock()
		if l := strings.Fields(f.last[name]); len(l) == 4 && l[0] == args[0] && l[3] == "activated" {
			f.last[name] = strings.Join(append(l[:3], args[1]), " ")
			f.marks = append(f.marks, name+" "+args[1])
		}
		return 0, nil
	}
	if strings.Contains(cmd, "nix-store") {
		f.mu.Lock()
		gated := f.substGate[name]
		if gated {
			f.substituting++
			f.most = max(f.most, f.substituting)
			f.changed.Broadcast()
		}
		f.mu.Unlock()
		if !gated {
			return 0, nil
		}
		select {
		case <-f.release:
		case <-ctx.Done():
		}
		f.mu.Lock()
		f.substituting--
		f.mu.Unlock()
		return 0, ctx.Err()
	}
	return 127, nil
}

func (f *fakeHosts) RunFresh(ctx context.Context, name, cmd string, _ io.Reader, stdout, _ io.Writer) (int, error) {
	if _, ok := programArgs(cmd, "query"); ok {
		f.mu.Lock()
		defer f.mu.Unlock()
		fmt.Fprintf(stdout, "active=%s\nprofile=%s\n", f.active[name], f.profile[name])
		return 0, nil
	}
	args, ok := programArgs(cmd, "confirm")
	if !ok {
		return 127, nil
	}
	f.mu.Lock()
	if f.unconfirmable[name] {
		f.mu.Unlock()
		return -1, errors.New("connection refused")
	}
	j := f.jobs[args[0]]
	verdict := "late"
	if j.state == "activated" {
		j.confirmed, verdict = true, "confirmed"
		f.changed.Broadcast()
	}
	f.mu.Unlock()
	fmt.Fprintf(stdout, "%s\n%s\n", verdict, f.follow(ctx, args[0], ""))
	return 0, ctx.Err()
}

func (f *fakeHosts) Reset(string)   {}
func (f *fakeHosts) Release(string) {}

func (f *fakeHosts) lock(name, owner string, stdin io.Reader, stdout io.Writer) (int, error) {
	f.mu.Lock()
	if h := f.locks[name]; h != "" {
		f.mu.Unlock()
		fmt.Fprintf(stdout, "held by %s\n", h)
		return 75, nil
	}
	f.locks[name] = owner
	f.changed.Broadcast()
	fmt.Fprintf(stdout, "locked\nactive=%s\nlink=system-1-link\nprofile=%s\nlast=%s\nend\n", f.active[name], f.profile[name], f.last[name])
	f.mu.Unlock()
	bufio.NewReader(stdin).ReadString('\n') // held until stdin closes
	f.mu.Lock()
	delete(f.locks, name)
	f.changed.Broadcast()
	f.mu.Unlock()
	return 0, nil
}

// start runs a job like job.sh with GOAL TARGET CONFIRM LIMIT CHECKS.
func (f *fakeHosts) start(name, id string, args []string) {
	goal, target, confirm, checks := host.Goal(args[0]), args[1], args[2] != "0", args[4] == "1"
	f.mu.Lock()
	j := &fakeJob{host: name, state: "running", before: [2]string{f.active[name], f.profile[name]}}
	f.jobs[id] = j
	f.changed.Broadcast()
	f.mu.Unlock()
	go func() {
		if f.stalled != nil {
			<-f.stalled
		}
		f.mu.Lock()
		defer f.mu.Unlock()
		defer f.changed.Broadcast()
		if from, ok := strings.CutPrefix(target, "restore:"); ok {
			b := f.jobs[from].before
			f.active[name], f.profile[name] = b[0], b[1]
			f.restores = append(f.restores, name)
			j.state = "done ok back on " + b[0]
			f.last[name] = fmt.Sprintf("%s %s %s ok", id, goal, b[0])
			return
		}
		f.order = append(f.order, name)
		if f.fail[name] {
			j.state = "done failed switch-to-configuration " + string(goal) + " exited 1"
			if confirm {
				f.active[name], f.profile[name] = j.before[0], j.before[1]
				j.state = "done rolled-back switch-to-configuration " + string(goal) + " exited 1"
			}
			return
		}
		if goal == host.GoalSwitch || goal == host.GoalTest {
			f.active[name] = target
		}
		if goal.SetsProfile() {
			f.profile[name] = target
		}
		if confirm {
			j.state = "activated"
			f.changed.Broadcast()
			for !j.confirmed && !f.unconfirmable[name] {
				f.changed.Wait()
			}
			if !j.confirmed {
				f.active[name], f.profile[name] = j.before[0], j.before[1]
				j.state = "done rolled-back not confirmed within 1s"
				return
			}
		}
		j.state = "done ok "
		status := "ok"
		if checks {
			status = "activated"
		}
		f.last[name] = fmt.Sprintf("%s %s %s %s", id, goal, target, status)
	}()
}

func (f *fakeHosts) follow(ctx context.Context, id, until string) string {
	stop := context.AfterFunc(ctx, func() { f.mu.Lock(); f.changed.Broadcast(); f.mu.Unlock() })
	defer stop()
	f.mu.Lock()
	defer f.mu.Unlock()
	j := f.jobs[id]
	for !strings.HasPrefix(j.state, "done") && (until == "" || j.state != until) && ctx.Err() == nil {
		f.changed.Wait()
	}
	return j.state
}

func (f *fakeHosts) Copy(ctx context.Context, dest string, paths []string) error {
	if f.pushing != nil {
		f.pushing <- dest
	}
	if f.hung[dest] {
		<-ctx.Done()
		return fmt.Errorf("nix copy to %s: %w", dest, ctx.Err())
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.copies = append(f.copies, dest)
	return nil
}
