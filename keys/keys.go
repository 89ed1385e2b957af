// Package keys puts secrets (keys) on instances. A key's value comes from
// text in the hive, a file on this machine or a command run here; it is
// read when it is uploaded, and goes to the host over the pooled SSH
// connection: sftp into a private directory beside its destination, or,
// where sftp is off or the login is not root, a shell program that reads
// it from stdin. It never enters a Nix store, a log, an event, hive.state,
// an error message or a command line, nor a file on this machine.
//
// A file's value is streamed from the file to each host, never held
// whole.
package keys

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/nix-hive/nix-hive/eval"
)

// Values produces keys' values, each command once per run however many
// instances share it (a command in defaults.keys runs once, not once per
// host).
type Values struct {
	hive *eval.Hive

	mu    sync.Mutex
	texts map[string]map[string]string // instance -> key -> text
	byID  map[string]*value            // command values by command
}

type value struct {
	once sync.Once
	data []byte
	err  error
}

// NewValues reads key values for the hive h.
func NewValues(h *eval.Hive) *Values {
	return &Values{hive: h, byID: map[string]*value{}}
}

// LoadTexts evaluates the text keys of instances in one go (a deploy asks
// before its hosts need them).
func (v *Values) LoadTexts(ctx context.Context, instances []string) error {
	texts, err := v.hive.Evaluator.KeyTexts(ctx, instances)
	if err != nil {
		return err
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.texts == nil {
		v.texts = map[string]map[string]string{}
	}
	for n, t := range texts {
		v.texts[n] = t
	}
	return nil
}

// A Value is a key's value, ready to be sent: held in memory (a text or
// a command's output) or a file, read as it is sent.
type Value struct {
	data []byte
	file string // absolute; "" for a value in memory
}

// Of is the value of key k of instance n: a text or a command's output
// (the command runs now, once for all instances that share it), or a
// file, checked to be a regular file this process can open. Its error
// never holds the value.
func (v *Values) Of(ctx context.Context, n string, k *eval.Key) (*Value, error) {
	switch k.Source {
	case "text":
		v.mu.Lock()
		loaded := v.texts != nil && v.texts[n] != nil
		t, ok := v.texts[n][k.Name]
		v.mu.Unlock()
		if !loaded {
			if err := v.LoadTexts(ctx, []string{n}); err != nil {
				return nil, err
			}
			v.mu.Lock()
			t, ok = v.texts[n][k.Name]
			v.mu.Unlock()
		}
		if !ok {
			return nil, fmt.Errorf("key %s: no text evaluated for instance %s", k.Name, n)
		}
		return &Value{data: []byte(t)}, nil
	case "file":
		p := k.File
		if !filepath.IsAbs(p) {
			p = filepath.Join(v.hive.Src.Dir, p)
		}
		f, _, err := openFile(p)
		if err != nil {
			return nil, fmt.Errorf("key %s: %w", k.Name, err)
		}
		f.Close()
		return &Value{file: p}, nil
	case "command":
		data, err := v.once("command\x00"+strings.Join(k.Command, "\x00"), func() ([]byte, error) { return runCommand(ctx, v.hive.Src.Dir, k) })
		if err != nil {
			return nil, err
		}
		return &Value{data: data}, nil
	}
	return nil, fmt.Errorf("key %s: unknown source %q", k.Name, k.Source)
}

func (v *Values) once(id string, produce func() ([]byte, error)) ([]byte, error) {
	v.mu.Lock()
	val := v.byID[id]
	if val == nil {
		val = &value{}
		v.byID[id] = val
	}
	v.mu.Unlock()
	val.once.Do(func() { val.data, val.err = produce() })
	return val.data, val.err
}

// openFile opens a key's file, which must be a regular file (its length
// is known, and reading it cannot hang), and returns its length.
func openFile(p string) (*os.File, int64, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, 0, err
	}
	st, err := f.Stat()
	if err == nil && !st.Mode().IsRegular() {
		err = fmt.Errorf("%s is not a regular file", p)
	}
	if err != nil {
		f.Close()
		return nil, 0, err
	}
	return f, st.Size(), nil
}

// Open returns the value's content and its length. A file is opened
// anew for each upload and read as it is sent; its content ends at the
// length the file had when opened.
func (v *Value) Open() (io.ReadCloser, int64, error) {
	if v.file == "" {
		return io.NopCloser(bytes.NewReader(v.data)), int64(len(v.data)), nil
	}
	f, size, err := openFile(v.file)
	if err != nil {
		return nil, 0, err
	}
	return struct {
		io.Reader
		io.Closer
	}{io.LimitReader(f, size), f}, size, nil
}

// scrubHead is how much of a file Value.Scrub reads.
const scrubHead = 1 << 20

// Scrub is the package's Scrub with this value: for a file, its first
// scrubHead bytes (a defence: what the host or sftp says holds no value,
// and a large file is not read whole for a message).
func (v *Value) Scrub(s string) string {
	if v.file == "" {
		return Scrub(s, v.data)
	}
	f, _, err := openFile(v.file)
	if err != nil {
		return s
	}
	defer f.Close()
	head, _ := io.ReadAll(io.LimitReader(f, scrubHead))
	return Scrub(s, head)
}

// runCommand runs a key's command in the hive's directory dir (where a
// relative key file is found too) and returns its stdout. Its stderr goes
// into the error (the last line), scrubbed of what stdout said.
func runCommand(ctx context.Context, dir string, k *eval.Key) ([]byte, error) {
	cmd := exec.CommandContext(ctx, k.Command[0], k.Command[1:]...)
	cmd.Dir = dir
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	// A command that leaves a child holding its stdout (an agent it
	// started) must not hang the deploy; its value may be cut short then,
	// so that is a failure.
	cmd.WaitDelay = 10 * time.Second
	err := cmd.Run()
	if err == nil {
		return stdout.Bytes(), nil
	}
	if errors.Is(err, exec.ErrWaitDelay) {
		return nil, fmt.Errorf("key %s: command %s exited but something it started kept its output open", k.Name, k.Command[0])
	}
	msg := strings.TrimSpace(stderr.String())
	if i := strings.LastIndexByte(msg, '\n'); i >= 0 {
		msg = msg[i+1:]
	}
	msg = Scrub(msg, stdout.Bytes())
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return nil, fmt.Errorf("key %s: command %s exited %d: %s", k.Name, k.Command[0], ee.ExitCode(), msg)
	}
	return nil, fmt.Errorf("key %s: command %s: %w", k.Name, k.Command[0], err)
}

// Scrub replaces every secret, and every line of one, in s: a defence for
// messages built from what a command or a host printed.
func Scrub(s string, secrets ...[]byte) string {
	for _, sec := range secrets {
		for _, part := range append([][]byte{sec}, bytes.Split(sec, []byte("\n"))...) {
			if p := strings.TrimSpace(string(part)); len(p) >= 4 {
				s = strings.ReplaceAll(s, p, "<secret>")
			}
		}
	}
	return s
}
