package keys

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/pkg/sftp"

	"github.com/nix-hive/nix-hive/eval"
	"github.com/nix-hive/nix-hive/transport"
)

// localHost is a host that is this machine: commands run here with sh,
// and sftp is pkg/sftp's server in this process.
type localHost struct {
	c *transport.SFTP

	mu       sync.Mutex
	commands []string
}

func (h *localHost) Run(ctx context.Context, _, cmd string, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	h.mu.Lock()
	h.commands = append(h.commands, cmd)
	h.mu.Unlock()
	c := exec.CommandContext(ctx, "sh", "-c", cmd)
	c.Stdin, c.Stdout, c.Stderr = stdin, stdout, stderr
	err := c.Run()
	if c.ProcessState != nil && c.ProcessState.Exited() {
		return c.ProcessState.ExitCode(), nil
	}
	return -1, err
}

func (h *localHost) SFTP(context.Context, string) (*transport.SFTP, error) { return h.c, nil }

func newLocalHost(t *testing.T) *localHost {
	t.Helper()
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
	c, err := transport.NewSFTP(cr, cw)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sw.Close(); cw.Close(); c.Close() })
	return &localHost{c: c}
}

// owner is this process's user and group: the only owner a test that
// may not run as root can give a file.
func owner(t *testing.T) (u, g string, uid, gid int) {
	t.Helper()
	me, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	grp, err := user.LookupGroupId(me.Gid)
	if err != nil {
		t.Fatal(err)
	}
	return me.Username, grp.Name, os.Getuid(), os.Getgid()
}

// A host's keys go up at once over its sftp session: each lands with
// its value, owner and mode, in directories made for it; keys with the
// same destination go in order (the last one's value stays); the host
// is asked once for the one owner they share; no staging directory is
// left.
func TestUploadManyKeysOverSFTP(t *testing.T) {
	h := newLocalHost(t)
	u, g, uid, gid := owner(t)
	remote := t.TempDir()
	in := &eval.Instance{Name: "i", User: "root", Keys: map[string]*eval.Key{}}
	texts := map[string]string{}
	want := map[string]string{} // dest -> value
	for i := range 60 {
		name := fmt.Sprintf("k%02d", i)
		k := &eval.Key{Name: name, Source: "text", User: u, Group: g, Mode: "0400", Upload: eval.PreActivation,
			Dest: filepath.Join(remote, "a", name)}
		texts[name] = "value of " + name
		switch {
		case i%3 == 1:
			k.Dest, k.Mode = filepath.Join(remote, "b", "c", name), "0440"
		case i%7 == 0:
			k.Source, k.Command = "command", []string{"printf", "%s", "command " + name}
		}
		if i%5 == 0 {
			k.Upload = eval.PostActivation
		}
		in.Keys[name] = k
		want[k.Dest] = texts[name]
		if k.Source == "command" {
			want[k.Dest] = "command " + name
		}
	}
	// Two keys for one file: the later, by name, wins.
	for _, name := range []string{"same-1", "same-2"} {
		in.Keys[name] = &eval.Key{Name: name, Source: "text", User: u, Group: g, Mode: "0400", Upload: eval.PreActivation,
			Dest: filepath.Join(remote, "a", "same")}
		texts[name] = "value of " + name
	}
	want[filepath.Join(remote, "a", "same")] = "value of same-2"

	v := NewValues(&eval.Hive{Src: eval.Source{Dir: t.TempDir()}}, DefaultTimeout)
	v.texts = map[string]map[string]string{"i": texts}
	up := &Uploader{Host: h, Values: v}
	ctx := context.Background()
	b, err := up.Prepare(ctx, in)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Upload(ctx, ""); err != nil {
		t.Fatal(err)
	}
	for dest, value := range want {
		got, err := os.ReadFile(dest)
		if err != nil || string(got) != value {
			t.Errorf("%s: %q %v, want %q", dest, got, err, value)
			continue
		}
		fi, _ := os.Stat(dest)
		st := fi.Sys().(*syscall.Stat_t)
		mode := os.FileMode(0o400)
		if strings.Contains(dest, "/b/c/") {
			mode = 0o440
		}
		if fi.Mode().Perm() != mode || int(st.Uid) != uid || int(st.Gid) != gid {
			t.Errorf("%s: %v %d:%d, want %v %d:%d", dest, fi.Mode().Perm(), st.Uid, st.Gid, mode, uid, gid)
		}
	}
	left, _ := filepath.Glob(filepath.Join(remote, "*", ".nix-hive-*"))
	more, _ := filepath.Glob(filepath.Join(remote, "*", "*", ".nix-hive-*"))
	if left = append(left, more...); len(left) > 0 {
		t.Errorf("staging directories left: %s", left)
	}
	if len(h.commands) == 0 {
		t.Error("the host was never asked for the keys' owners")
	}
	for _, c := range h.commands {
		if n := strings.Count(c, " "+u+" "+g); n != 1 {
			t.Errorf("the host was asked for the keys' owner %d times in one question: %s", n, c)
		}
	}
}

// After a key fails no other starts, and the error is that of the first
// key, in order, that failed, whichever failed first in time.
func TestUploadNamesTheFirstFailedKey(t *testing.T) {
	h := newLocalHost(t)
	u, g, _, _ := owner(t)
	remote := t.TempDir()
	// A file where a key's directory should be: its upload fails.
	for _, blocked := range []string{"x", "y"} {
		if err := os.WriteFile(filepath.Join(remote, blocked), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	in := &eval.Instance{Name: "i", User: "root", Keys: map[string]*eval.Key{}}
	texts := map[string]string{}
	for i := range 40 {
		name := fmt.Sprintf("k%02d", i)
		dir := "ok"
		switch i {
		case 10:
			dir = "x"
		case 30:
			dir = "y"
		}
		in.Keys[name] = &eval.Key{Name: name, Source: "text", User: u, Group: g, Mode: "0400", Upload: eval.PreActivation,
			Dest: filepath.Join(remote, dir, name)}
		texts[name] = "value of " + name
	}
	v := NewValues(&eval.Hive{Src: eval.Source{Dir: t.TempDir()}}, DefaultTimeout)
	v.texts = map[string]map[string]string{"i": texts}
	ctx := context.Background()
	b, err := (&Uploader{Host: h, Values: v}).Prepare(ctx, in)
	if err != nil {
		t.Fatal(err)
	}
	err = b.Upload(ctx, "")
	if want := "key k10 to " + filepath.Join(remote, "x", "k10") + ": "; err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Fatalf("error %v, want one beginning %q", err, want)
	}
	if strings.Contains(err.Error(), "value of") {
		t.Errorf("the error holds a value: %v", err)
	}
}

// commandKeys are keys of instance "i" whose values come from shell
// commands run in dir, all owned by this process's user.
func commandKeys(t *testing.T, dir string, commands map[string]string) (*Uploader, *eval.Instance, *localHost) {
	t.Helper()
	u, g, _, _ := owner(t)
	in := &eval.Instance{Name: "i", User: "root", Keys: map[string]*eval.Key{}}
	for name, c := range commands {
		in.Keys[name] = &eval.Key{Name: name, Source: "command", Command: []string{"/bin/sh", "-c", c}, User: u, Group: g,
			Mode: "0400", Upload: eval.PreActivation, Dest: filepath.Join(dir, "keys", name), Timeout: "30s"}
	}
	h := newLocalHost(t)
	return &Uploader{Host: h, Values: NewValues(&eval.Hive{Src: eval.Source{Dir: dir}}, DefaultTimeout)}, in, h
}

// An instance's key commands run at once: each of these waits until
// both have started, which one after the other would never see.
func TestPrepareRunsCommandsAtOnce(t *testing.T) {
	dir := t.TempDir()
	wait := `touch "started-$1"; i=0; while [ "$(ls started-* | wc -l)" -lt 2 ]; do
  i=$((i+1)); [ $i -lt 200 ] || { echo "alone" >&2; exit 9; }; sleep 0.05; done; printf "value of %s" "$1"`
	commands := map[string]string{}
	for i := range 2 {
		name := fmt.Sprintf("c%d", i)
		commands[name] = "set -- " + name + "; " + wait
	}
	up, in, _ := commandKeys(t, dir, commands)
	b, err := up.Prepare(context.Background(), in)
	if err != nil {
		t.Fatal(err)
	}
	for name := range commands {
		if got := content(t, b.values[name]); got != "value of "+name {
			t.Errorf("%s: %q", name, got)
		}
	}
}

// The error of a Prepare is that of the first key, in order, whose value
// could not be had, though a later one failed first; the host's answer
// about owners does not hide it.
func TestPrepareNamesTheFirstFailedCommand(t *testing.T) {
	dir := t.TempDir()
	up, in, _ := commandKeys(t, dir, map[string]string{
		"a": "sleep 0.5; echo a failed >&2; exit 3",
		"b": "echo b failed >&2; exit 4",
		"c": "printf fine",
	})
	in.Keys["c"].User = "nix-hive-no-such-user"
	_, err := up.Prepare(context.Background(), in)
	if want := "key a: command /bin/sh exited 3: a failed"; err == nil || err.Error() != want {
		t.Errorf("error %v, want %q", err, want)
	}
}

// PrepareAll asks the host once for the owners of every key; of two
// missing owners it names the pre-activation key's, as Prepare would
// have before Upload asked for the post-activation key's.
func TestPrepareAllAsksOnce(t *testing.T) {
	dir := t.TempDir()
	up, in, h := commandKeys(t, dir, map[string]string{"a": "printf a", "b": "printf b", "c": "printf c"})
	in.Keys["a"].Upload = eval.PostActivation
	b, err := up.PrepareAll(context.Background(), in)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Upload(context.Background(), ""); err != nil {
		t.Fatal(err)
	}
	if len(h.commands) != 1 {
		t.Errorf("the host was asked %d times, want once: %q", len(h.commands), h.commands)
	}
	for _, name := range []string{"a", "b", "c"} {
		if got, err := os.ReadFile(filepath.Join(dir, "keys", name)); err != nil || string(got) != name {
			t.Errorf("key %s: %q %v", name, got, err)
		}
	}

	in.Keys["a"].User = "nix-hive-no-such-user-a"
	in.Keys["c"].User = "nix-hive-no-such-user-c"
	_, err = up.PrepareAll(context.Background(), in)
	if want := "key owners: no user nix-hive-no-such-user-c on the host"; err == nil || err.Error() != want {
		t.Errorf("error %v, want %q", err, want)
	}
}
