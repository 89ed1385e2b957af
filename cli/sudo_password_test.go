package cli_test

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/creack/pty"
	"github.com/nix-hive/nix-hive/host"
	"github.com/nix-hive/nix-hive/internal/testenv"
)

// A login whose sudo wants a password and allows nix-hive-agent alone
// (README's least-privilege rule): nix-hive asks for the password once on
// its terminal (a pty here), feeds it to sudo on the host, and the deploy
// (lock, substitution, keys, activation job, confirmation) and a rollback
// go through the agent; the password shows up in no output, no event, no
// process's command line or environment, and no file. Without a terminal
// the deploy fails saying what to do, and leaves the host alone.
func TestDeploySudoPassword(t *testing.T) {
	const name = "nixhive-pw"
	testenv.Tool(t, "sudo", "scripts/setup installs it")
	testenv.Tool(t, "chpasswd", "Debian's passwd package has it")
	b := make([]byte, 12)
	rand.Read(b)
	password := "pw-" + hex.EncodeToString(b)

	s := newSeed(t)
	if _, err := user.Lookup(name); err != nil {
		if out, err := exec.Command("useradd", "--no-create-home", "--shell", "/bin/sh", name).CombinedOutput(); err != nil {
			t.Fatalf("useradd: %v\n%s", err, out)
		}
		t.Cleanup(func() { exec.Command("userdel", name).Run() })
	}
	// On stdin: this test keeps the password off command lines too.
	chpasswd := exec.Command("chpasswd")
	chpasswd.Stdin = strings.NewReader(name + ":" + password + "\n")
	if out, err := chpasswd.CombinedOutput(); err != nil {
		t.Fatalf("chpasswd: %v\n%s", err, out)
	}
	sudoers := "/etc/sudoers.d/" + name
	// The agent where the host's sessions find it, and a sudo rule that
	// allows it and nothing else.
	agent := filepath.Join(s.lab.Host("www-1").Root, "bin", "nix-hive-agent")
	if err := os.WriteFile(agent, []byte(host.AgentScript()), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(sudoers, []byte(name+" ALL=(root) "+agent+"\n"), 0o440); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(sudoers) })
	s.edit(`at = name: attrs: attrs // (lab.${name} or { });`, `at = name: attrs: attrs // (lab.${name} or { }) // (if attrs ? user then { inherit (attrs) user; } else { });`)
	s.edit(`www-1 = at "www-1" { system = "www";`, `www-1 = at "www-1" { user = "`+name+`"; system = "www";`)
	if code, _, _ := s.run("deploy", "portico"); code != 0 {
		t.Fatal("deploy of the store failed")
	}
	tmp := t.TempDir()
	start := func(tty *os.File, args ...string) (*exec.Cmd, *bytes.Buffer) {
		t.Helper()
		var out bytes.Buffer
		cmd := exec.Command("nix-hive", append([]string{"-c", s.dir}, args...)...)
		cmd.Stdout, cmd.Stderr = &out, &out
		cmd.Env = append(os.Environ(), "TMPDIR="+tmp)
		// A session of its own: no controlling terminal, unless tty.
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		if tty != nil {
			cmd.Stdin = tty
			cmd.SysProcAttr.Setctty, cmd.SysProcAttr.Ctty = true, 0
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		return cmd, &out
	}
	exitOf := func(cmd *exec.Cmd) int {
		cmd.Wait()
		return cmd.ProcessState.ExitCode()
	}

	// No terminal: the host's sudo wants a password nobody can type.
	cmd, out := start(nil, "deploy", "www-1")
	code0 := exitOf(cmd)
	t.Logf("deploy without a terminal: exit %d\n%s", code0, out)
	if code := code0; code == 0 || !strings.Contains(out.String(), "--ask-sudo-password") {
		t.Errorf("deploy without a terminal: exit %d, output does not name --ask-sudo-password:\n%s", code, out)
	}
	if got := s.current("www-1"); got != "" {
		t.Errorf("www-1 was activated (%s) although sudo could not run", got)
	}
	cmd, out = start(nil, "deploy", "--ask-sudo-password", "www-1")
	if code := exitOf(cmd); code == 0 || !strings.Contains(out.String(), "no terminal") {
		t.Errorf("deploy --ask-sudo-password without a terminal: exit %d:\n%s", code, out)
	}

	// On a terminal: asked once; a wrong answer fails the host (one
	// attempt, no hang), the right one deploys.
	code, out, _, prompts, leaks := ptyRun(t, start, "wrong-"+password, "deploy", "www-1")
	if len(leaks) > 0 {
		t.Errorf("the wrong password was in processes: %s", strings.Join(leaks, "; "))
	}
	if code == 0 || !strings.Contains(out.String(), "sudo refused the password") || prompts != 1 {
		t.Errorf("a wrong password: exit %d, %d prompts:\n%s", code, prompts, out)
	}
	if got := s.current("www-1"); got != "" {
		t.Errorf("www-1 was activated (%s) with a wrong sudo password", got)
	}
	code, out, transcript, prompts, leaks := ptyRun(t, start, password, "deploy", "www-1")
	if code != 0 {
		t.Fatalf("deploy on a terminal: exit %d\n%s\n--- terminal\n%s", code, out, transcript.String())
	}
	if prompts != 1 {
		t.Errorf("asked %d times for the password, want once:\n%s", prompts, transcript.String())
	}
	want := s.state().Systems["www"].OutPath
	if got := s.current("www-1"); got != want {
		t.Errorf("www-1 runs %q, want %s", got, want)
	}
	for what, text := range map[string]string{"output and events": out.String(), "terminal": transcript.String()} {
		if strings.Contains(text, password) {
			t.Errorf("the password is in nix-hive's %s", what)
		}
	}
	if len(leaks) > 0 {
		t.Errorf("the password was in processes: %s", strings.Join(leaks, "; "))
	}
	// A second system, then back to the first: rollback through the
	// agent too. The second deploy draws its progress bar on the
	// terminal: the prompt stops it, has a line of its own, and the bar
	// comes back once the password is in.
	s.edit(`toplevel = testSystem { name = "www"; };`, `toplevel = testSystem { name = "www"; version = "2"; };`)
	if code := ptyRunWithBar(t, s.dir, tmp, password, "deploy", "www-1"); code != 0 {
		t.Fatalf("second deploy: exit %d", code)
	}
	if got := s.current("www-1"); !strings.HasSuffix(got, "-nixos-system-www-2") {
		t.Fatalf("www-1 runs %s after the second deploy", got)
	}
	if code, out, _, _, more := ptyRun(t, start, password, "rollback", "www-1"); code != 0 || len(more) > 0 || strings.Contains(out.String(), password) {
		t.Errorf("rollback: exit %d, leaks %v", code, more)
	}
	if got := s.current("www-1"); got != want {
		t.Errorf("www-1 runs %s after the rollback, want %s", got, want)
	}
	// An agent of another nix-hive: not used, and the refusal says why.
	old := strings.Replace(host.AgentScript(), "v="+host.AgentVersion(), "v=0ld", 1)
	if err := os.WriteFile(agent, []byte(old), 0o755); err != nil {
		t.Fatal(err)
	}
	code, out, _, _, _ = ptyRun(t, start, password, "deploy", "--force", "www-1")
	if code == 0 || !strings.Contains(out.String(), `nix-hive-agent is version \"0ld\", this nix-hive's is `+host.AgentVersion()) {
		t.Errorf("an agent of another version: exit %d, no word of the versions", code)
	}
	if got := s.current("www-1"); got != want {
		t.Errorf("www-1 runs %s after a refused deploy, want %s", got, want)
	}
	for _, dir := range []string{s.lab.Dir, s.dir, tmp, "/var/log"} {
		for _, f := range filesContaining(t, dir, password) {
			t.Errorf("the password is in file %s", f)
		}
	}
}

// ptyRun runs nix-hive with args and a pty as its terminal, answers each
// password prompt with answer, and watches every process's command line
// and environment for the answer while it runs.
func ptyRun(t *testing.T, start func(*os.File, ...string) (*exec.Cmd, *bytes.Buffer), answer string, args ...string) (code int, out, transcript *bytes.Buffer, prompts int, leaks []string) {
	ptmx, tty, err := pty.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer ptmx.Close()
	cmd, out := start(tty, append([]string{"--json"}, args...)...)
	tty.Close()
	done := make(chan struct{})
	var leakMu sync.Mutex
	go func() {
		for {
			select {
			case <-done:
				return
			default:
			}
			found := procLeaks(answer)
			leakMu.Lock()
			leaks = append(leaks, found...)
			leakMu.Unlock()
			time.Sleep(10 * time.Millisecond) // sampling, not synchronisation
		}
	}()
	transcript = &bytes.Buffer{}
	read := make(chan struct{})
	go func() {
		defer close(read)
		r := bufio.NewReader(io.TeeReader(ptmx, transcript))
		for {
			chunk, err := r.ReadString(':')
			if strings.Contains(chunk, "sudo password") {
				prompts++
				ptmx.Write([]byte(answer + "\n"))
			}
			if err != nil {
				return
			}
		}
	}()
	cmd.Wait()
	code = cmd.ProcessState.ExitCode()
	done <- struct{}{}
	ptmx.Close()
	<-read
	leakMu.Lock()
	defer leakMu.Unlock()
	t.Logf("%s on a terminal: exit %d\n%s\n--- terminal\n%s", strings.Join(args, " "), code, out, transcript)
	return code, out, transcript, prompts, leaks
}

// ptyRunWithBar runs nix-hive with a pty as its terminal and stderr, so
// that it draws its progress bar, and answers the sudo password prompt
// once nothing has been drawn on the terminal for a second after it (the
// old bar redrew itself over the prompt every 150 ms). It checks that
// the prompt began on a line of its own and that the bar came back.
func ptyRunWithBar(t *testing.T, dir, tmp, answer string, args ...string) int {
	t.Helper()
	ptmx, tty, err := pty.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer ptmx.Close()
	if err := pty.Setsize(ptmx, &pty.Winsize{Rows: 40, Cols: 160}); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	cmd := exec.Command("nix-hive", append([]string{"-c", dir}, args...)...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = tty, &out, tty
	cmd.Env = append(os.Environ(), "TMPDIR="+tmp)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	tty.Close()
	const prompt = "[nix-hive] sudo password for the hosts' logins: "
	var mu sync.Mutex
	var transcript bytes.Buffer
	read := make(chan struct{})
	go func() {
		defer close(read)
		b := make([]byte, 4096)
		for {
			n, err := ptmx.Read(b)
			mu.Lock()
			transcript.Write(b[:n])
			mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	snapshot := func() string {
		mu.Lock()
		defer mu.Unlock()
		return transcript.String()
	}
	var asked int
	err = waitFor("the sudo password prompt", func() bool {
		asked = strings.Index(snapshot(), prompt)
		return asked >= 0
	})
	if err != nil {
		cmd.Process.Kill()
		t.Fatalf("%v:\n%q", err, snapshot())
	}
	// An observation window: the bar must not draw while the prompt waits.
	time.Sleep(time.Second)
	after := snapshot()[asked+len(prompt):]
	ptmx.Write([]byte(answer + "\n"))
	cmd.Wait()
	code := cmd.ProcessState.ExitCode()
	ptmx.Close()
	<-read
	all := snapshot()
	t.Logf("%s with a progress bar: exit %d\n%s\n--- terminal\n%q", strings.Join(args, " "), code, out.String(), all)
	if after != "" {
		t.Errorf("the terminal changed while the prompt waited for an answer (the bar drew over it): %q", after)
	}
	if before := all[:asked]; before != "" && !strings.HasSuffix(before, "\n") && !strings.HasSuffix(before, "\x1b[J") {
		t.Errorf("the prompt did not begin on a line of its own: %q", before[max(0, len(before)-40):])
	}
	if !strings.Contains(all[asked:], "hosts ") {
		t.Errorf("the progress bar did not come back after the prompt: %q", all[asked:])
	}
	if strings.Contains(all, answer) {
		t.Errorf("the password is on the terminal")
	}
	return code
}

// procLeaks lists the processes whose command line or environment holds
// secret.
func procLeaks(secret string) []string {
	var out []string
	pids, _ := filepath.Glob("/proc/[0-9]*")
	for _, p := range pids {
		for _, f := range []string{"cmdline", "environ"} {
			b, err := os.ReadFile(filepath.Join(p, f))
			if err == nil && bytes.Contains(b, []byte(secret)) {
				out = append(out, p+"/"+f+": "+strings.ReplaceAll(string(b), "\x00", " "))
			}
		}
	}
	return out
}

// filesContaining lists the regular files under dir that hold secret.
func filesContaining(t *testing.T, dir, secret string) []string {
	var out []string
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return nil
		}
		if info, err := d.Info(); err != nil || info.Size() > 64<<20 {
			return nil
		}
		if b, err := os.ReadFile(p); err == nil && bytes.Contains(b, []byte(secret)) {
			out = append(out, p)
		}
		return nil
	})
	return out
}
