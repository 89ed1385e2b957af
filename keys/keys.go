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
	"syscall"
	"time"

	"github.com/nix-hive/nix-hive/eval"
)

// MaxValue is the most a text or command key's value may hold: such a
// value is kept in memory, once for every host that shares it, until the
// run ends. A file key has no limit (its file is streamed to each host).
const MaxValue = 1 << 20

// DefaultTimeout bounds a key's command when neither the key nor the run
// says otherwise.
const DefaultTimeout = time.Minute

// maxValueText is MaxValue in messages.
const maxValueText = "1 MiB"

// Values produces keys' values, each command once per run however many
// instances share it (a command in defaults.keys runs once, not once per
// host).
type Values struct {
	hive *eval.Hive
	// timeout bounds a key's command that has no timeout of its own (0:
	// no bound).
	timeout time.Duration

	mu    sync.Mutex
	texts map[string]map[string]string // instance -> key -> text
	byID  map[string]*value            // command values by command and timeout
}

type value struct {
	once sync.Once
	data []byte
	err  error
}

// NewValues reads key values for the hive h; a key's command without a
// timeout of its own is stopped after timeout (0: never).
func NewValues(h *eval.Hive, timeout time.Duration) *Values {
	return &Values{hive: h, timeout: timeout, byID: map[string]*value{}}
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
		if len(t) > MaxValue {
			return nil, fmt.Errorf("key %s: its text has %d bytes, more than the %s a text key may hold (a larger value must come from a file key)", k.Name, len(t), maxValueText)
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
		timeout := v.timeout
		if k.Timeout != "" {
			t, err := time.ParseDuration(k.Timeout)
			if err != nil || t <= 0 {
				return nil, fmt.Errorf("key %s: timeout %q is not a duration such as \"30s\"", k.Name, k.Timeout)
			}
			timeout = t
		}
		data, err := v.once("command\x00"+timeout.String()+"\x00"+strings.Join(k.Command, "\x00"), func() ([]byte, error) {
			return runCommand(ctx, v.hive.Src.Dir, k, timeout)
		})
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

// Scrub is the package's Scrub with this value: for a file, its first
// MaxValue bytes (a defence: what the host or sftp says holds no value,
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
	head, _ := io.ReadAll(io.LimitReader(f, MaxValue))
	return Scrub(s, head)
}

// Causes of a key's command being stopped.
var (
	errTimedOut = errors.New("timed out")
	errTooLarge = errors.New("value too large")
)

// interrupted is an error saying what Ctrl-C stopped; it is
// context.Canceled to errors.Is, so the host counts as interrupted.
type interrupted struct{ msg string }

func (e *interrupted) Error() string { return e.msg }
func (e *interrupted) Unwrap() error { return context.Canceled }

// runCommand runs a key's command in the hive's directory dir (where a
// relative key file is found too) and returns its stdout. Its stderr goes
// into the error (the last line), scrubbed of what stdout said.
//
// The command runs in a process group of its own, with no input: Ctrl-C
// on the terminal reaches nix-hive alone, which stops the whole group
// (the command and what it started) when the run is interrupted, after
// timeout (0: never), or as soon as stdout passes MaxValue.
func runCommand(ctx context.Context, dir string, k *eval.Key, timeout time.Duration) ([]byte, error) {
	parent := ctx
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	if timeout > 0 {
		var stop context.CancelFunc
		ctx, stop = context.WithTimeoutCause(ctx, timeout, errTimedOut)
		defer stop()
	}
	cmd := exec.CommandContext(ctx, k.Command[0], k.Command[1:]...)
	cmd.Dir = dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error {
		if err := syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); err != nil {
			return os.ErrProcessDone // the group is gone already
		}
		return nil
	}
	stdout := &bounded{max: MaxValue, full: func() { cancel(errTooLarge) }}
	stderr := &tail{max: 8 << 10}
	cmd.Stdout, cmd.Stderr = stdout, stderr
	// A command that leaves a child holding its stdout outside its group
	// (an agent in a session of its own) must not hang the deploy; its
	// value may be cut short then, so that is a failure.
	cmd.WaitDelay = 10 * time.Second
	err := cmd.Run()
	switch {
	case stdout.over:
		return nil, fmt.Errorf("key %s: command %s printed more than %s, the most a command key's value may hold, and was stopped (a larger value must come from a file key)", k.Name, k.Command[0], maxValueText)
	case err == nil:
		return stdout.buf.Bytes(), nil
	case parent.Err() != nil && errors.Is(parent.Err(), context.Canceled):
		return nil, &interrupted{fmt.Sprintf("key %s: command %s was interrupted, and stopped", k.Name, k.Command[0])}
	case parent.Err() != nil:
		return nil, fmt.Errorf("key %s: command %s stopped: %w", k.Name, k.Command[0], parent.Err())
	case errors.Is(context.Cause(ctx), errTimedOut):
		return nil, fmt.Errorf("key %s: command %s timed out after %s, and was stopped (the key's timeout attribute, or --key-timeout, gives it longer)", k.Name, k.Command[0], timeout)
	case errors.Is(err, exec.ErrWaitDelay):
		return nil, fmt.Errorf("key %s: command %s exited but something it started kept its output open", k.Name, k.Command[0])
	}
	msg := strings.TrimSpace(string(stderr.b))
	if i := strings.LastIndexByte(msg, '\n'); i >= 0 {
		msg = msg[i+1:]
	}
	msg = Scrub(msg, stdout.buf.Bytes())
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return nil, fmt.Errorf("key %s: command %s exited %d: %s", k.Name, k.Command[0], ee.ExitCode(), msg)
	}
	return nil, fmt.Errorf("key %s: command %s: %w", k.Name, k.Command[0], err)
}

// bounded keeps what is written to it up to max bytes; a byte more and
// it calls full and refuses the rest.
type bounded struct {
	buf  bytes.Buffer
	max  int
	over bool
	full func()
}

func (b *bounded) Write(p []byte) (int, error) {
	if !b.over && b.buf.Len()+len(p) > b.max {
		b.over = true
		b.full()
	}
	if b.over {
		return 0, errTooLarge
	}
	return b.buf.Write(p)
}

// tail keeps the last max bytes written to it.
type tail struct {
	b   []byte
	max int
}

func (t *tail) Write(p []byte) (int, error) {
	t.b = append(t.b, p...)
	if len(t.b) > t.max {
		t.b = append(t.b[:0], t.b[len(t.b)-t.max:]...)
	}
	return len(p), nil
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
