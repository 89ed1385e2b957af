package mux

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/nix-hive/nix-hive/transport"
)

// Command is how to run a holder in the background: Path with Args (its
// name first), to which spawn adds the holder's own flags: --socket,
// --log and --idle. The program must hand them, with its stdin, stdout
// and stderr, to Run. nix-hive's is its own `mux serve`.
type Command struct {
	Path string
	Args []string
}

// socketFlag names the holder's socket on its command line, where alive
// looks for it.
const socketFlag = "--socket"

// Ensure returns the socket of cfg's holder, starting one with cmd that
// ends after idle without use unless one answers there already; pid is
// the started holder's, 0 when one was running. A holder a concurrent
// command started first serves this one as well as its own would.
func Ensure(cfg transport.Config, idle time.Duration, cmd Command) (sock string, pid int, err error) {
	if _, err := Dir(true); err != nil {
		return "", 0, err
	}
	if sock, err = Running(cfg); sock != "" || err != nil {
		return sock, 0, err
	}
	// What holders killed before they could clean up left goes now.
	if _, err := Holders(cfg.Hive); err != nil {
		return "", 0, err
	}
	if sock, err = Socket(cfg); err != nil {
		return "", 0, err
	}
	pid, err = spawn(cfg, sock, idle, cmd)
	if err != nil && Answers(sock) {
		return sock, 0, nil // lost the race to another command's holder
	}
	return sock, pid, err
}

// spawn starts cmd in a session of its own, hands it cfg on stdin, and
// waits until it listens (its first line of output) or fails (its log
// says why). The holder shares no output with this command:
// `$(nix-hive status)` must not wait for it to end.
func spawn(cfg transport.Config, sock string, idle time.Duration, cmd Command) (int, error) {
	conf, err := encodeConfig(cfg)
	if err != nil {
		return 0, err
	}
	// Each holder its own log, beside its socket: a retired one may still
	// write to its own while the next holder of the hive writes to
	// another. It removes it when it ends.
	logFile, err := os.CreateTemp(filepath.Dir(sock), strings.TrimSuffix(filepath.Base(sock), ".sock")+".*.log")
	if err != nil {
		return 0, fmt.Errorf("mux: %w", err)
	}
	logPath := logFile.Name()
	defer logFile.Close()
	c := &exec.Cmd{Path: cmd.Path, Args: append(cmd.Args[:len(cmd.Args):len(cmd.Args)], socketFlag, sock, "--log", logPath, "--idle", idle.String()),
		Stdin: bytes.NewReader(conf), Stderr: logFile, SysProcAttr: &syscall.SysProcAttr{Setsid: true}}
	out, err := c.StdoutPipe()
	if err != nil {
		return 0, fmt.Errorf("mux: %w", err)
	}
	if err := c.Start(); err != nil {
		return 0, fmt.Errorf("mux: start %s: %w", cmd.Path, err)
	}
	line, _ := bufio.NewReader(out).ReadString('\n')
	if strings.TrimSpace(line) != "ready" {
		werr := c.Wait()
		b, _ := os.ReadFile(logPath)
		os.Remove(logPath)
		return 0, fmt.Errorf("mux: the holder did not start (%v): %s", werr, strings.TrimSpace(string(b)))
	}
	go c.Wait() // reaps it should it end while this command runs
	return c.Process.Pid, nil
}

// Run is a holder's whole life, as a Command spawned runs it: it reads
// its config from stdin, listens on socket, prints "ready" on stdout
// (and closes it, if it is a file: its starter returns then), and holds
// connections until it is stopped, idle for idle (0: never), or told to
// end by SIGTERM or SIGINT. It logs to stderr, and removes log (its
// stderr's file, named in its record) when it ends.
func Run(stdin io.Reader, stdout, stderr io.Writer, socket, log string, idle time.Duration) error {
	conf, err := io.ReadAll(stdin)
	if err != nil {
		return fmt.Errorf("mux: read config: %w", err)
	}
	cfg, err := decodeConfig(conf)
	if err != nil {
		return err
	}
	logf := func(format string, args ...any) {
		fmt.Fprintf(stderr, "%s %s\n", time.Now().UTC().Format(time.RFC3339), fmt.Sprintf(format, args...))
	}
	s, err := NewServer(cfg, idle, logf)
	if err != nil {
		return err
	}
	s.SetLog(log)
	ln, err := s.Listen(socket)
	if err != nil {
		s.Pool().Close()
		return err
	}
	// Its own signals only: it outlives the command that started it, and
	// that command's Ctrl-C is not for it.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	logf("pid %d listening on %s for %d instances", os.Getpid(), socket, len(cfg.Endpoints))
	fmt.Fprintln(stdout, "ready")
	if f, ok := stdout.(*os.File); ok {
		f.Close() // start returns now
	}
	err = s.Serve(ctx, ln)
	logf("ended")
	return err
}
