package transport

import (
	"bytes"
	"errors"
	"io"
	"io/fs"

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
// its first maxLine bytes. It reads until EOF rather than trusting the
// size the server reports, which is 0 for files under /proc.
func (r Reader) FirstLine(p string) (string, error) {
	f, err := r.c.Open(p)
	if err != nil {
		return orAnswer("", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxLine))
	if err != nil {
		return orAnswer("", err)
	}
	line, _, _ := bytes.Cut(b, []byte{'\n'})
	return string(line), nil
}
