package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// CI reports whether the tests run under CI, where nothing may be skipped.
func CI() bool { return os.Getenv("CI") != "" }

// Missing skips t, or fails it under CI, saying what is missing and how to
// get it.
func Missing(t testing.TB, what string) {
	t.Helper()
	if CI() {
		t.Fatalf("CI: cannot run: %s", what)
	}
	t.Skipf("skipping: %s", what)
}

// Tool returns the path of a program on PATH; without it the test skips
// (fails under CI). hint says where it comes from (a Debian package).
func Tool(t testing.TB, name, hint string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		Missing(t, name+" not found in PATH ("+hint+")")
	}
	return p
}

// Eventually polls cond until it holds, for what happens asynchronously
// (a signal landing, a file a detached job writes, a process ending):
// never a sleep that hopes. It gives up after two minutes, a bound against
// a hang and not a speed assertion.
func Eventually(what string, cond func() bool) error {
	deadline := time.Now().Add(2 * time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("gave up waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return nil
}

// WaitFor is Eventually, failing t when it gives up.
func WaitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	if err := Eventually(what, cond); err != nil {
		t.Fatal(err)
	}
}

// WaitGone waits for the processes (pids, on this machine) to end, as
// Eventually does; a zombie has ended. It reports on t what did not.
func WaitGone(t testing.TB, what string, pids ...string) {
	t.Helper()
	for _, p := range pids {
		// "/proc//stat" is the machine's own: it would never end.
		if n, err := strconv.Atoi(p); err != nil || n <= 0 {
			t.Errorf("%s: %q is no pid", what, p)
			continue
		}
		if err := Eventually("process "+p+" to end", func() bool { return processGone(p) }); err != nil {
			t.Errorf("%s: %v", what, err)
		}
	}
}

func processGone(pid string) bool {
	b, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return true
	}
	// pid (comm) STATE ...: the state follows the last parenthesis.
	s := string(b)
	return strings.HasPrefix(strings.TrimSpace(s[strings.LastIndexByte(s, ')')+1:]), "Z")
}
