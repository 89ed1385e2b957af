package transport

import (
	"bytes"
	"encoding/binary"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/pkg/sftp"

	"github.com/nix-hive/nix-hive/internal/testenv"
)

// packet frames an SFTP request: type, id 7, path, then the given words.
func packet(typ byte, p string, words ...uint32) []byte {
	body := []byte{typ}
	body = binary.BigEndian.AppendUint32(body, 7)
	body = binary.BigEndian.AppendUint32(body, uint32(len(p)))
	body = append(body, p...)
	for _, w := range words {
		body = binary.BigEndian.AppendUint32(body, w)
	}
	return append(binary.BigEndian.AppendUint32(nil, uint32(len(body))), body...)
}

type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }

func TestModeWriterRewrites(t *testing.T) {
	const read, write, creat, excl = 0x01, 0x02, 0x08, 0x20
	tests := []struct {
		name string
		in   []byte
		want []byte
	}{
		{"create of an asked path gains its mode",
			packet(fxpOpen, "/run/keys/.x/tls", write|creat|excl, 0),
			packet(fxpOpen, "/run/keys/.x/tls", write|creat|excl, attrPermission, 0o400)},
		{"mkdir of an asked path gains its mode",
			packet(fxpMkdir, "/run/keys/.x", 0),
			packet(fxpMkdir, "/run/keys/.x", attrPermission, 0o400)},
		{"open without create is left alone",
			packet(fxpOpen, "/run/keys/.x/tls", read, 0),
			packet(fxpOpen, "/run/keys/.x/tls", read, 0)},
		{"a path nobody asked for is left alone",
			packet(fxpOpen, "/etc/motd", write|creat, 0),
			packet(fxpOpen, "/etc/motd", write|creat, 0)},
		{"attributes already there are left alone",
			packet(fxpOpen, "/run/keys/.x/tls", write|creat, attrPermission, 0o600),
			packet(fxpOpen, "/run/keys/.x/tls", write|creat, attrPermission, 0o600)},
		{"a chown of an asked path gains its mode",
			packet(fxpSetstat, "/run/keys/.x/tls", attrUIDGID, 65534, 65534),
			packet(fxpSetstat, "/run/keys/.x/tls", attrUIDGID|attrPermission, 65534, 65534, 0o400)},
		{"a setstat with more than the owner is left alone",
			packet(fxpSetstat, "/run/keys/.x/tls", attrUIDGID|attrPermission, 0, 0, 0o600),
			packet(fxpSetstat, "/run/keys/.x/tls", attrUIDGID|attrPermission, 0, 0, 0o600)},
		{"a chown of a path nobody asked for is left alone",
			packet(fxpSetstat, "/etc/shadow", attrUIDGID, 0, 0),
			packet(fxpSetstat, "/etc/shadow", attrUIDGID, 0, 0)},
		{"other requests pass through",
			packet(13, "/run/keys/.x/tls"), // REMOVE
			packet(13, "/run/keys/.x/tls")},
		{"a truncated path length is passed through, not read past",
			append(binary.BigEndian.AppendUint32(nil, 9), fxpOpen, 0, 0, 0, 7, 0xff, 0xff, 0xff, 0xff),
			append(binary.BigEndian.AppendUint32(nil, 9), fxpOpen, 0, 0, 0, 7, 0xff, 0xff, 0xff, 0xff)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Whole, then one byte at a time, then two packets in one write:
			// pkg/sftp may split a packet over several writes.
			for _, split := range []int{len(tt.in), 1} {
				var out bytes.Buffer
				m := newModeWriter(nopCloser{&out})
				m.sent = new(atomic.Int64)
				m.ask("/run/keys/.x/tls", 0o400)
				m.ask("/run/keys/.x", 0o400)
				for i := 0; i < len(tt.in); i += split {
					if n, err := m.Write(tt.in[i:min(i+split, len(tt.in))]); err != nil || n != min(split, len(tt.in)-i) {
						t.Fatalf("write: %d, %v", n, err)
					}
				}
				if !bytes.Equal(out.Bytes(), tt.want) {
					t.Errorf("split %d:\n got %x\nwant %x", split, out.Bytes(), tt.want)
				}
				if n := m.sent.Load(); n != 1 {
					t.Errorf("split %d: counted %d packets, want 1", split, n)
				}
			}
			var out bytes.Buffer
			m := newModeWriter(nopCloser{&out})
			m.sent = new(atomic.Int64)
			m.ask("/run/keys/.x/tls", 0o400)
			m.ask("/run/keys/.x", 0o400)
			m.Write(append(append([]byte{}, tt.in...), tt.in...))
			if !bytes.Equal(out.Bytes(), append(append([]byte{}, tt.want...), tt.want...)) {
				t.Errorf("two in one write:\n got %x", out.Bytes())
			}
			if n := m.sent.Load(); n != 2 {
				t.Errorf("two in one write: counted %d packets, want 2", n)
			}
		})
	}
}

// Against a real sftp server (pkg/sftp's, in process, which like OpenSSH's
// creates with the requested permissions): CreateMode's file has its mode
// from the start, where a plain create gets the server's 0644.
func TestCreateModeAgainstSFTPServer(t *testing.T) {
	old := syscall.Umask(0o022)
	defer syscall.Umask(old)
	c := serveSFTP(t)
	dir := t.TempDir()
	f, err := c.CreateMode(filepath.Join(dir, "secret"), 0o400)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(filepath.Join(dir, "secret")); err != nil || fi.Mode().Perm() != 0o400 {
		t.Errorf("created with CreateMode(0400): %v %v", fi.Mode(), err)
	}
	if _, err := f.Write([]byte("value")); err != nil {
		t.Fatalf("write to a 0400 file created for writing: %v", err)
	}
	f.Close()
	if b, _ := os.ReadFile(filepath.Join(dir, "secret")); string(b) != "value" {
		t.Errorf("content %q", b)
	}
	g, err := c.OpenFile(filepath.Join(dir, "plain"), os.O_WRONLY|os.O_CREATE|os.O_EXCL)
	if err != nil {
		t.Fatal(err)
	}
	g.Close()
	if fi, _ := os.Stat(filepath.Join(dir, "plain")); fi.Mode().Perm() != fs.FileMode(0o644) {
		t.Errorf("a plain create is %v; this test assumes the server's 0644", fi.Mode())
	}
}

// ChownMode's one request gives both the owner and the mode, on a real
// server (pkg/sftp's, as root: it chowns).
func TestChownModeAgainstSFTPServer(t *testing.T) {
	if os.Getuid() != 0 {
		testenv.Missing(t, "root, to chown (run the tests as root)")
	}
	c := serveSFTP(t)
	p := filepath.Join(t.TempDir(), "key")
	f, err := c.CreateMode(p, 0o400)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	before := c.modes.sent
	c.modes.sent = new(atomic.Int64)
	defer func() { c.modes.sent = before }()
	if err := c.ChownMode(p, 65534, 65534, 0o440); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	if fi.Mode().Perm() != 0o440 || st.Uid != 65534 || st.Gid != 65534 {
		t.Errorf("after ChownMode(65534, 65534, 0440): %v %d:%d", fi.Mode(), st.Uid, st.Gid)
	}
	if n := c.modes.sent.Load(); n != 1 {
		t.Errorf("ChownMode sent %d requests, want 1", n)
	}
}

func serveSFTP(t *testing.T) *SFTP {
	cr, sw := io.Pipe()
	sr, cw := io.Pipe()
	srv, err := sftp.NewServer(struct {
		io.Reader
		io.WriteCloser
	}{sr, sw})
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve()
	modes := newModeWriter(cw)
	c, err := sftp.NewClientPipe(cr, modes)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sw.Close(); cw.Close(); c.Close() })
	return &SFTP{Client: c, modes: modes}
}
