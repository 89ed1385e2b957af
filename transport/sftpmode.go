package transport

import (
	"encoding/binary"
	"io"
	"io/fs"
	"os"
	"sync"
	"sync/atomic"

	"github.com/pkg/sftp"
)

// SFTP is a pooled sftp client that can also create a file or directory
// with its mode from the start. pkg/sftp's OPEN and MKDIR requests carry no
// attributes, so the server creates with its own default (0666 or 0777
// under the host's umask: world-readable under 022) and a chmod can only
// follow; CreateMode and MkdirMode ask for the mode in the request itself,
// as the protocol allows (SFTP v3, section 6.3), which OpenSSH's server
// passes to open(2) and mkdir(2).
type SFTP struct {
	*sftp.Client
	modes  *modeWriter
	stages stages
}

// CreateMode creates p, which must not exist, for writing, with mode
// (less the host's umask) from the moment it exists.
func (c *SFTP) CreateMode(p string, mode fs.FileMode) (*sftp.File, error) {
	defer c.modes.ask(p, mode)()
	return c.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL)
}

// MkdirMode creates directory p with mode (less the host's umask) from
// the moment it exists.
func (c *SFTP) MkdirMode(p string, mode fs.FileMode) error {
	defer c.modes.ask(p, mode)()
	return c.Mkdir(p)
}

// ChownMode gives p owner uid:gid and mode in one request: pkg/sftp's
// Chown sends a SETSTAT with the owner alone, and this one carries the
// permissions as well, as SFTP v3 allows (OpenSSH's server applies the
// mode, then the owner). A file with hundreds of siblings to write saves
// a request each.
func (c *SFTP) ChownMode(p string, uid, gid int, mode fs.FileMode) error {
	defer c.modes.ask(p, mode)()
	return c.Chown(p, uid, gid)
}

// SFTP packet types and flags this file reads or writes (SFTP v3).
const (
	fxpOpen        = 3
	fxpSetstat     = 9
	fxpMkdir       = 14
	fxfCreat       = 0x08
	attrUIDGID     = 0x02
	attrPermission = 0x04
)

// modeWriter sits between pkg/sftp and the session's stdin. It passes
// every packet through unchanged, except an OPEN that creates, or a
// MKDIR, of a path that CreateMode or MkdirMode is waiting on: that one
// gains the permissions attribute. It counts the packets in sent, if set:
// it frames them anyway, so the count costs an atomic add per packet.
type modeWriter struct {
	w    io.WriteCloser
	buf  []byte        // a packet not yet complete
	sent *atomic.Int64 // packets written, if not nil

	mu    sync.Mutex
	modes map[string]fs.FileMode
}

func newModeWriter(w io.WriteCloser) *modeWriter {
	return &modeWriter{w: w, modes: map[string]fs.FileMode{}}
}

// ask makes the next create of p carry mode until the returned func is
// called.
func (m *modeWriter) ask(p string, mode fs.FileMode) func() {
	m.mu.Lock()
	m.modes[p] = mode.Perm()
	m.mu.Unlock()
	return func() {
		m.mu.Lock()
		delete(m.modes, p)
		m.mu.Unlock()
	}
}

// Write forwards whole packets; pkg/sftp writes one packet at a time,
// possibly in several calls, under its own lock.
func (m *modeWriter) Write(p []byte) (int, error) {
	m.buf = append(m.buf, p...)
	for len(m.buf) >= 4 {
		end := 4 + int(binary.BigEndian.Uint32(m.buf))
		if len(m.buf) < end {
			break
		}
		if _, err := m.w.Write(m.rewrite(m.buf[:end])); err != nil {
			return 0, err
		}
		if m.sent != nil {
			m.sent.Add(1)
		}
		m.buf = m.buf[end:]
	}
	if len(m.buf) == 0 {
		m.buf = nil // let a large packet's buffer go
	}
	return len(p), nil
}

func (m *modeWriter) Close() error { return m.w.Close() }

// rewrite returns packet, or a copy of it with the permissions attribute
// if it creates a path waiting for a mode, or sets its owner (ChownMode).
// The request's layout: length, type, id, path, then pflags (OPEN only),
// then attributes: flags and the fields they name, in the order size,
// owner, permissions. pkg/sftp sends a create's empty (flags 0), a
// Chown's with the owner alone.
func (m *modeWriter) rewrite(packet []byte) []byte {
	body := packet[4:]
	if len(body) < 9 || (body[0] != fxpOpen && body[0] != fxpMkdir && body[0] != fxpSetstat) {
		return packet
	}
	n := int(binary.BigEndian.Uint32(body[5:9]))
	rest := body[min(9+n, len(body)):]
	u32 := binary.BigEndian.Uint32
	switch body[0] {
	case fxpOpen: // pflags with create, then empty attributes
		if len(rest) != 8 || u32(rest)&fxfCreat == 0 || u32(rest[4:]) != 0 {
			return packet
		}
	case fxpMkdir: // empty attributes
		if len(rest) != 4 || u32(rest) != 0 {
			return packet
		}
	case fxpSetstat: // the owner alone: flags, uid, gid
		if len(rest) != 12 || u32(rest) != attrUIDGID {
			return packet
		}
	}
	m.mu.Lock()
	mode, ok := m.modes[string(body[9:9+n])]
	m.mu.Unlock()
	if !ok {
		return packet
	}
	out := make([]byte, 0, len(packet)+4)
	out = binary.BigEndian.AppendUint32(out, uint32(len(body)+4))
	if body[0] == fxpSetstat {
		// flags, uid, gid become flags with the mode, uid, gid, mode.
		out = append(out, body[:len(body)-12]...)
		out = binary.BigEndian.AppendUint32(out, attrUIDGID|attrPermission)
		out = append(out, rest[4:]...)
	} else {
		out = append(out, body[:len(body)-4]...)
		out = binary.BigEndian.AppendUint32(out, attrPermission)
	}
	return binary.BigEndian.AppendUint32(out, uint32(mode))
}
