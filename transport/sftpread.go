package transport

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"sync"

	"github.com/pkg/sftp"
)

// Reader reads links and small files over an sftp session. Once the
// session is open, a read starts no process on the host: a query that
// goes through it costs the host a few system calls of its sftp-server
// instead of a shell and its commands. Every method returns "" (or false)
// with a nil error when the host answered that the path cannot be read
// that way (missing, not a link, not permitted), as a shell's readlink or
// read would print nothing; an error means the session itself failed.
type Reader struct{ c *SFTP }

// Reader reads through c.
func (c *SFTP) Reader() Reader { return Reader{c} }

// answered says err is the host's reply to the request rather than a
// failure of the session.
func answered(err error) bool {
	var se *sftp.StatusError
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, fs.ErrPermission) || errors.As(err, &se)
}

func orAnswer[T any](v T, err error) (T, error) {
	if err != nil && answered(err) {
		var zero T
		return zero, nil
	}
	return v, err
}

// Readlink is the target of the symbolic link p.
func (r Reader) Readlink(p string) (string, error) { return orAnswer(r.c.ReadLink(p)) }

// Resolve is p with every symbolic link resolved, if what it names
// exists. (OpenSSH's sftp-server resolves a path whose last component is
// missing too; the Stat first makes it answer like readlink -e.)
func (r Reader) Resolve(p string) (string, error) {
	if _, err := r.c.Stat(p); err != nil {
		return orAnswer("", err)
	}
	return orAnswer(r.c.RealPath(p))
}

// Exists says whether p exists (without following a last symbolic link).
func (r Reader) Exists(p string) (bool, error) {
	_, err := r.c.Lstat(p)
	if err == nil {
		return true, nil
	}
	return orAnswer(false, err)
}

// maxLine bounds FirstLine's read: the files it is for hold one short line.
const maxLine = 4096

// FirstLine is the first line of the file p, without its newline, from
// its first maxLine bytes. It asks for them in one read rather than
// trusting the size the server reports, which is 0 for files under /proc;
// the files it is for are read whole by one read(2).
func (r Reader) FirstLine(p string) (string, error) {
	f, err := r.c.Open(p)
	if err != nil {
		return orAnswer("", err)
	}
	defer f.Close()
	b := make([]byte, maxLine)
	n, err := f.Read(b)
	if err != nil && !errors.Is(err, io.EOF) {
		return orAnswer("", err)
	}
	line, _, _ := bytes.Cut(b[:n], []byte{'\n'})
	return string(line), nil
}

// FileQuery is one read of a batch: Op names the FileReader method
// ("readlink", "resolve", "exists", "firstline") to call with Path.
type FileQuery struct {
	Op   string `json:"op"`
	Path string `json:"path"`
}

// FileAnswer is a FileQuery's answer: S for the string methods, B for
// exists.
type FileAnswer struct {
	S string `json:"s,omitempty"`
	B bool   `json:"b,omitempty"`
}

// fileMethods are FileReader's one-at-a-time reads.
type fileMethods interface {
	Readlink(p string) (string, error)
	Resolve(p string) (string, error)
	Exists(p string) (bool, error)
	FirstLine(p string) (string, error)
}

func answer(r fileMethods, q FileQuery) (a FileAnswer, err error) {
	switch q.Op {
	case "readlink":
		a.S, err = r.Readlink(q.Path)
	case "resolve":
		a.S, err = r.Resolve(q.Path)
	case "exists":
		a.B, err = r.Exists(q.Path)
	case "firstline":
		a.S, err = r.FirstLine(q.Path)
	default:
		err = fmt.Errorf("unknown file request %q", q.Op)
	}
	return a, err
}

// BatchOf answers qs with r's one-at-a-time reads, in order, or all at
// once when concurrent; the first session error fails the batch.
func BatchOf(r fileMethods, qs []FileQuery, concurrent bool) ([]FileAnswer, error) {
	out := make([]FileAnswer, len(qs))
	errs := make([]error, len(qs))
	if !concurrent {
		for i, q := range qs {
			if out[i], errs[i] = answer(r, q); errs[i] != nil {
				return nil, errs[i]
			}
		}
		return out, nil
	}
	var wg sync.WaitGroup
	for i, q := range qs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i], errs[i] = answer(r, q)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return out, nil
}

// Batch answers qs with their requests in flight together on the
// session: a host answers them in one round trip's time, and its sshd
// reads and writes them in fewer, larger pieces.
func (r Reader) Batch(qs []FileQuery) ([]FileAnswer, error) { return BatchOf(r, qs, true) }
