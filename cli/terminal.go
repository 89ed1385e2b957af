package cli

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// The controlling terminal is shared by the progress bar and the prompts
// (a sudo password, a key's passphrase) that a deploy may need half-way:
// a prompt must never be drawn over by the bar, or the command looks hung
// while it waits for an answer typed blind. So the bar draws through a
// barWriter, and a prompt takes the terminal from it (promptOnTerminal):
// the bar is cleared, the prompt gets a line of its own, and the bar is
// drawn again below it once the answer is in.

// barWriter is the progress bar's mpb.ConsoleWriter: like mpb's own, it
// moves the cursor up over what its last flush drew before drawing anew,
// but under a lock a prompt can hold.
type barWriter struct {
	mu  sync.Mutex
	buf bytes.Buffer
	out *os.File
	up  int // lines the last flush drew
}

func (w *barWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.Write(p)
}

func (w *barWriter) ReadFrom(r io.Reader) (int64, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.ReadFrom(r)
}

func (w *barWriter) IsTerminal() bool { return true }

func (w *barWriter) GetTermSize() (width, height int, err error) {
	ws, err := unix.IoctlGetWinsize(int(w.out.Fd()), unix.TIOCGWINSZ)
	if err != nil {
		return 0, 0, err
	}
	return int(ws.Col), int(ws.Row), nil
}

// Flush draws what mpb wrote, over the lines the last flush drew.
func (w *barWriter) Flush(lines int) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	var b bytes.Buffer
	w.clear(&b)
	b.Write(w.buf.Bytes())
	w.buf.Reset()
	w.up = lines
	_, err := w.out.Write(b.Bytes())
	return err
}

// clear writes what erases the lines the last flush drew, leaving the
// cursor where the first of them began.
func (w *barWriter) clear(b io.Writer) {
	if w.up > 0 {
		fmt.Fprintf(b, "\x1b[%dA\x1b[J", w.up)
		w.up = 0
	}
}

// takeover erases the bar and keeps it from drawing until release: what
// is printed meanwhile stays, and the bar is drawn again below it.
func (w *barWriter) takeover() (release func()) {
	w.mu.Lock()
	var b bytes.Buffer
	w.clear(&b)
	w.out.Write(b.Bytes())
	return w.mu.Unlock
}

// drawing is the bar drawing on the terminal now, if any.
var drawing struct {
	mu  sync.Mutex
	bar *barWriter
}

func setDrawing(w *barWriter) {
	drawing.mu.Lock()
	defer drawing.mu.Unlock()
	drawing.bar = w
}

// promptOnTerminal runs prompt (which writes to and reads from the
// terminal) with the progress bar, if one draws, out of its way. One
// prompt at a time: two hosts' sudo wanting a password ask once.
func promptOnTerminal[T any](prompt func() (T, error)) (T, error) {
	drawing.mu.Lock()
	defer drawing.mu.Unlock()
	if drawing.bar != nil {
		defer drawing.bar.takeover()()
	}
	return prompt()
}
