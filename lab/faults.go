package lab

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// Faults are what a test does to a running host, acting on its real
// processes or its address, so that what nix-hive sees is what it would
// see of a hung machine or a bad network. They are apart from Host, which
// runs the host as a lab host should run, because a fault is done to the
// host from outside: it finds the host's processes and changes nothing
// Host keeps.
type Faults struct{ h *Host }

// Faults returns the faults a test can inject into h.
func (h *Host) Faults() Faults { return Faults{h} }

// processes lists the host's processes as pids of this machine.
func (f Faults) processes() ([]int, error) {
	h := f.h
	init := h.pid()
	if init == 0 {
		return nil, fmt.Errorf("host %s is stopped", h.Name)
	}
	ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", init))
	if err != nil {
		return nil, fmt.Errorf("host %s: %w", h.Name, err)
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if l, err := os.Readlink(filepath.Join("/proc", e.Name(), "ns/pid")); err == nil && l == ns {
			out = append(out, pid)
		}
	}
	return out, nil
}

// Freeze stops every process of the host (SIGSTOP), as a hung machine
// would be: its kernel side still accepts TCP connections, nothing
// answers. Thaw resumes it.
func (f Faults) Freeze() error {
	// A process forked while the others were being stopped is caught by
	// the next round.
	stopped := map[int]bool{}
	for round := 0; round < 10; round++ {
		pids, err := f.processes()
		if err != nil {
			return err
		}
		fresh := 0
		for _, p := range pids {
			if !stopped[p] {
				syscall.Kill(p, syscall.SIGSTOP)
				stopped[p] = true
				fresh++
			}
		}
		if fresh == 0 {
			return nil
		}
	}
	return fmt.Errorf("freeze host %s: processes kept appearing", f.h.Name)
}

// Thaw resumes a frozen host.
func (f Faults) Thaw() error {
	pids, err := f.processes()
	if err != nil {
		return err
	}
	for _, p := range pids {
		syscall.Kill(p, syscall.SIGCONT)
	}
	return nil
}

// CutConnections kills the host's sshd connection processes (not the
// listener, not what sessions started in sessions of their own): every
// SSH connection to the host ends at once, as when a network path drops
// and comes back. It returns how many connection processes it killed.
func (f Faults) CutConnections() (int, error) {
	pids, err := f.processes()
	if err != nil {
		return 0, err
	}
	listener := 0
	if b, err := os.ReadFile(f.h.files.sshdPid); err == nil {
		listener, _ = strconv.Atoi(strings.TrimSpace(string(b)))
	}
	n := 0
	for _, p := range pids {
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", p))
		if strings.TrimSpace(string(comm)) != "sshd" || nsPid(p) == listener {
			continue
		}
		if syscall.Kill(p, syscall.SIGKILL) == nil {
			n++
		}
	}
	return n, nil
}

// nsPid is pid's number inside its own pid namespace (the last NSpid).
func nsPid(pid int) int {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "NSpid:"); ok {
			f := strings.Fields(rest)
			if len(f) > 0 {
				n, _ := strconv.Atoi(f[len(f)-1])
				return n
			}
		}
	}
	return 0
}

// Silence replaces a stopped host's sshd with a listener that accepts TCP
// connections and never says a word, like a host whose sshd hangs (or a
// middlebox that swallows the traffic). It only works for hosts this
// machine reaches directly. Close the returned listener to undo it; the
// host can be started again afterwards.
func (f Faults) Silence() (*Silent, error) {
	h := f.h
	if h.netns != "" {
		return nil, errors.New("silence: only for hosts outside the internal network")
	}
	if h.pid() != 0 {
		return nil, fmt.Errorf("silence host %s: stop it first", h.Name)
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(h.Addr, strconv.Itoa(h.Port)))
	if err != nil {
		return nil, fmt.Errorf("silence host %s: %w", h.Name, err)
	}
	s := &Silent{ln: ln}
	go s.serve()
	return s, nil
}

// Silent is a listener that holds every connection open and silent.
type Silent struct {
	ln    net.Listener
	mu    sync.Mutex
	conns []net.Conn
	n     int
}

func (s *Silent) serve() {
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		s.conns = append(s.conns, c)
		s.n++
		s.mu.Unlock()
	}
}

// Accepted counts the connections it took.
func (s *Silent) Accepted() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.n
}

// Close stops listening and drops the connections.
func (s *Silent) Close() error {
	err := s.ln.Close()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.conns {
		c.Close()
	}
	s.conns = nil
	return err
}
