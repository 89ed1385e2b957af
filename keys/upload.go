package keys

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pkg/sftp"

	"github.com/nix-hive/nix-hive/eval"
	"github.com/nix-hive/nix-hive/fanout"
	"github.com/nix-hive/nix-hive/host"
	"github.com/nix-hive/nix-hive/transport"
)

// Host is what an upload needs of a connection to an instance
// (transport.Pool, or host.Hosts).
type Host interface {
	Run(ctx context.Context, name, cmd string, stdin io.Reader, stdout, stderr io.Writer) (int, error)
	SFTP(ctx context.Context, name string) (*transport.SFTP, error)
}

// Uploader puts an instance's keys on it.
type Uploader struct {
	Host   Host
	Values *Values
	// Privilege is how the shell way's writes become root for a login
	// that is not root (nil: they cannot).
	Privilege *host.Privilege
}

// NewUploader is the uploader of hive h's keys over hosts, becoming root
// with priv; the text keys of targets are evaluated now, in one go. A
// key's command without a timeout of its own is stopped after timeout
// (0: DefaultTimeout).
func NewUploader(ctx context.Context, h *eval.Hive, hosts Host, targets []string, priv *host.Privilege, timeout time.Duration) (*Uploader, error) {
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	v := NewValues(h, timeout)
	var withText []string
	for _, t := range targets {
		for _, k := range h.Inventory.Instances[t].Keys {
			if k.Source == "text" {
				withText = append(withText, t)
				break
			}
		}
	}
	if len(withText) > 0 {
		if err := v.LoadTexts(ctx, withText); err != nil {
			return nil, err
		}
	}
	return &Uploader{Host: hosts, Values: v, Privilege: priv}, nil
}

// Batch is an instance's keys with their values, ready to go.
type Batch struct {
	u        *Uploader
	instance *eval.Instance
	keys     []*eval.Key // sorted by name
	values   map[string]*Value
	ids      map[string][2]int // key -> uid, gid on the host
}

// commandsAtOnce is how many of an instance's key commands run at once
// while it is prepared.
const commandsAtOnce = 4

// Prepare has every key value of instance in (running commands, checking
// files, which are read as they are sent) and checks that the owners of
// its pre-activation keys exist on the host (a post-activation key's user
// may come with the new system: it is checked before its upload). Nothing
// is written anywhere; an error here leaves the host as it was. The host
// is asked for the owners while the values are had; a value that cannot
// be had is the error, before a missing owner (and stops the question).
func (u *Uploader) Prepare(ctx context.Context, in *eval.Instance) (*Batch, error) {
	return u.prepare(ctx, in, eval.PreActivation)
}

// PrepareAll is Prepare for an upload of all of instance's keys with no
// activation between them (keys upload): the host is asked for the
// owners of every key at once, those of the pre-activation keys first,
// so that the owner a failure names is the one Prepare and then Upload
// would have named.
func (u *Uploader) PrepareAll(ctx context.Context, in *eval.Instance) (*Batch, error) {
	return u.prepare(ctx, in, eval.PreActivation, eval.PostActivation)
}

func (u *Uploader) prepare(ctx context.Context, in *eval.Instance, owners ...string) (*Batch, error) {
	b := &Batch{u: u, instance: in, values: map[string]*Value{}, ids: map[string][2]int{}}
	for _, name := range slices.Sorted(mapsKeys(in.Keys)) {
		b.keys = append(b.keys, in.Keys[name])
	}
	octx, cancel := context.WithCancel(ctx)
	defer cancel()
	resolved := make(chan error, 1)
	go func() { resolved <- b.resolveOwners(octx, owners...) }()
	values, err := u.values(ctx, in.Name, b.keys)
	if err != nil {
		cancel() // its answer no longer matters
		<-resolved
		return nil, err
	}
	ownersErr := <-resolved
	for i, k := range b.keys {
		b.values[k.Name] = values[i]
	}
	return b, ownersErr
}

// values are the values of keys (of instance n), their commands up to
// commandsAtOnce at once. After a key's value cannot be had no other
// command starts, and the error is that of the first key, in order,
// whose value could not be had.
func (u *Uploader) values(ctx context.Context, n string, keys []*eval.Key) ([]*Value, error) {
	values := make([]*Value, len(keys))
	errs := make([]error, len(keys))
	fanout.Until(len(keys), commandsAtOnce, func(i int) bool {
		values[i], errs[i] = u.Values.Of(ctx, n, keys[i])
		return errs[i] == nil
	})
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	return values, nil
}

func mapsKeys[V any](m map[string]V) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// resolveOwners finds the uid and gid of the owners of the keys uploaded
// at each of whens ("" for all), in that order, that are not known yet,
// in one question to the host. Each user and group pair is asked for
// once, in the order of the first key that names it (the host answers
// each with a few processes: hundreds of keys share a handful of
// owners).
func (b *Batch) resolveOwners(ctx context.Context, whens ...string) error {
	var todo []*eval.Key
	asking := map[string]bool{}
	for _, when := range whens {
		for _, k := range b.keys {
			if _, known := b.ids[k.Name]; !known && !asking[k.Name] && (when == "" || k.Upload == when) {
				asking[k.Name] = true
				todo = append(todo, k)
			}
		}
	}
	if len(todo) == 0 {
		return nil
	}
	var pairs []string
	asked := map[[2]string]bool{}
	for _, k := range todo {
		if p := [2]string{k.User, k.Group}; !asked[p] {
			asked[p] = true
			pairs = append(pairs, k.User, k.Group)
		}
	}
	var out, stderr bytes.Buffer
	code, err := host.KeyOwners(ctx, b.u.Host, b.instance, b.u.Privilege, pairs, &out, &stderr)
	if err == nil && code != 0 {
		err = fmt.Errorf("%s", strings.TrimSpace(stderr.String()))
	}
	if err != nil {
		return fmt.Errorf("key owners: %w", err)
	}
	lines := strings.Fields(out.String())
	if len(lines) != len(pairs) {
		return fmt.Errorf("key owners: unexpected answer %q", out.String())
	}
	ids := map[[2]string][2]int{}
	for i := 0; i < len(pairs); i += 2 {
		uid, err1 := strconv.Atoi(lines[i])
		gid, err2 := strconv.Atoi(lines[i+1])
		if err := errors.Join(err1, err2); err != nil {
			return fmt.Errorf("key owners: %w", err)
		}
		ids[[2]string{pairs[i], pairs[i+1]}] = [2]int{uid, gid}
	}
	for _, k := range todo {
		b.ids[k.Name] = ids[[2]string{k.User, k.Group}]
	}
	return nil
}

// Names lists the batch's keys uploaded at when (pre- or post-activation;
// "" for all).
func (b *Batch) Names(when string) []string {
	var out []string
	for _, k := range b.keys {
		if when == "" || k.Upload == when {
			out = append(out, k.Name)
		}
	}
	return out
}

// inFlight is how many of a host's keys are on their way at once over
// its sftp session. pkg/sftp sends a request without waiting for the
// answers to the others', so a host's keys cost little more than the
// host's sftp server's work on them, instead of a dozen round trips
// each, one key after the other.
const inFlight = 16

// Upload writes the batch's keys uploaded at when ("" for all): each
// replaces its destination whole (readers see the old or the new value),
// with its owner and mode from the start, never readable by others. Over
// sftp, up to inFlight of them go at once (keys with the same
// destination one after the other, in order, so the last one's value
// stays); the shell writes them one after the other. After a key fails
// no other starts, and the error is that of the first key, in order,
// that failed (keys already on their way land or fail on their own).
func (b *Batch) Upload(ctx context.Context, when string) error {
	if err := b.resolveOwners(ctx, when); err != nil {
		return err
	}
	var keys []*eval.Key
	for _, k := range b.keys {
		if when == "" || k.Upload == when {
			keys = append(keys, k)
		}
	}
	if len(keys) == 0 {
		return nil
	}
	c, err := b.sftp(ctx)
	if err != nil {
		return b.failed(keys[0], err)
	}
	if c == nil {
		for _, k := range keys {
			if err := b.upload(ctx, k, nil); err != nil {
				return b.failed(k, err)
			}
		}
		return nil
	}
	up := &sftpUploads{c: c, dirs: map[string]*keyDir{}}
	defer up.close()
	chains := chainsByDest(keys)
	errs := make([]error, len(keys))
	var failed atomic.Bool // a chain under way starts no key after it
	fanout.Until(len(chains), inFlight, func(j int) bool {
		for _, i := range chains[j] {
			if failed.Load() {
				return false
			}
			if errs[i] = b.upload(ctx, keys[i], up); errs[i] != nil {
				failed.Store(true)
				return false
			}
		}
		return true
	})
	for i, err := range errs {
		if err != nil {
			return b.failed(keys[i], err)
		}
	}
	return nil
}

// chainsByDest are indexes into keys, one chain per destination in the
// order of their first key: keys sharing a destination go one after the
// other, so that the last one's value stays.
func chainsByDest(keys []*eval.Key) [][]int {
	var chains [][]int
	chainOf := map[string]int{}
	for i, k := range keys {
		if j, ok := chainOf[k.Dest]; ok {
			chains[j] = append(chains[j], i)
			continue
		}
		chainOf[k.Dest] = len(chains)
		chains = append(chains, []int{i})
	}
	return chains
}

// failed is the error of key k's upload: what went wrong, never its
// value.
func (b *Batch) failed(k *eval.Key, err error) error {
	return fmt.Errorf("key %s to %s: %s", k.Name, k.Dest, b.values[k.Name].Scrub(err.Error()))
}

// sftp is the host's sftp session for the batch's writes, or nil where
// the shell writes them. sftp runs as the login: only a root login can
// chown and write anywhere; others go through the privilege command. A
// host without sftp (NixOS allowSFTP = false) gets the shell too.
func (b *Batch) sftp(ctx context.Context) (*transport.SFTP, error) {
	if host.NeedsPrivilege(b.instance.User) {
		return nil, nil
	}
	c, err := b.u.Host.SFTP(ctx, b.instance.Name)
	if err != nil && strings.Contains(err.Error(), "subsystem") {
		return nil, nil
	}
	return c, err
}

// upload writes key k through up, or with the shell when up is nil.
func (b *Batch) upload(ctx context.Context, k *eval.Key, up *sftpUploads) error {
	mode, err := strconv.ParseUint(k.Mode, 8, 32)
	if err != nil {
		return fmt.Errorf("mode %q: %w", k.Mode, err)
	}
	r, size, err := b.values[k.Name].Open()
	if err != nil {
		return err
	}
	defer r.Close()
	value := &sending{ctx: ctx, r: r, size: size}
	id := b.ids[k.Name]
	open := readByOthers(id[0], id[1], os.FileMode(mode))
	if up != nil {
		return up.upload(k.Dest, id[0], id[1], os.FileMode(mode), open, value)
	}
	return b.uploadShell(ctx, k.Dest, id, k.Mode, open, value)
}

// readByOthers reports whether someone other than root may read a key
// file owned by uid:gid with mode: its owner or its group when not root,
// or everyone. Such a key's directories let others search them (see
// dirMode).
func readByOthers(uid, gid int, mode os.FileMode) bool {
	return uid != 0 && mode&0o400 != 0 || gid != 0 && mode&0o040 != 0 || mode&0o004 != 0
}

// dirMode is the mode of a directory nix-hive creates for a key, root's.
// When someone other than root may read the key (readByOthers), every
// directory on its path that root:root owns and closes to others gets
// search permission for others (o+x: 0751 for one nix-hive made), never
// read: they reach the key by its name, and its own owner, group and mode
// decide who reads it, as with sops-nix's and agenix's 0751 secret
// directories. Keys only root reads leave directories as they are. A
// directory with an owner or a group of its own is left to them: NixOS
// keeps /run/keys root:keys 0750 (and restores it at every boot and
// switch), entered by the members of keys, to which lib/module.nix adds
// the users its keys name.
const dirMode = 0o750

// sending is a value on its way: it stops when ctx ends, and tells sftp
// its size, so that sftp pipelines its writes. It is read in chunks,
// never whole.
type sending struct {
	ctx  context.Context
	r    io.Reader
	size int64
	n    int64 // read so far
}

func (s *sending) Read(p []byte) (int, error) {
	if err := s.ctx.Err(); err != nil {
		return 0, err
	}
	n, err := s.r.Read(p)
	s.n += int64(n)
	return n, err
}

func (s *sending) Size() int64 { return s.size }

// short is the error of a value that ended before its length: a file
// that shrank while it was read.
func (s *sending) short() error {
	if s.n == s.size {
		return nil
	}
	return fmt.Errorf("the value ended after %d of its %d bytes (its file changed while it was read)", s.n, s.size)
}

// sftpUploads is what the keys of one Upload share over the host's sftp
// session: their directories, each seen to once (keyDirs), with a
// staging directory in each (transport.Stage: 0700, made when the first
// key for the directory comes; the staging directories that uploads cut
// off earlier left there are removed first). It lasts one Upload: an
// activation between the pre- and post-activation keys may change the
// directories (NixOS makes /run/keys root:keys 0750 at every switch).
type sftpUploads struct {
	c    *transport.SFTP
	mu   sync.Mutex
	dirs map[string]*keyDir
}

// keyDir is a key directory as an Upload left it.
type keyDir struct {
	open  bool // seen to for a key others read
	stage *transport.Stage
}

// upload writes value to dest through a private file in its directory's
// stage (the file created with the owner bits of mode), synced (not
// under /run), given its owner and its whole mode in one request (none
// when its create gave them, see transport.PrivateFile.SetOwner), and
// renamed over dest: 4 to 6 requests. Its directories
// are made, and opened to others' search when open, as dirMode says.
func (u *sftpUploads) upload(dest string, uid, gid int, mode os.FileMode, open bool, value *sending) error {
	stage, err := u.dir(path.Dir(dest), open)
	if err != nil {
		return err
	}
	t, err := stage.Create(dest, mode)
	if err != nil {
		return err
	}
	if err := writeSynced(t.File, value, !inRun(dest)); err != nil {
		t.Discard()
		return fmt.Errorf("write %s: %w", t.Name(), err)
	}
	if err := t.SetOwner(uid, gid, mode); err != nil {
		t.Discard()
		return err
	}
	return t.Commit(mode)
}

// dir sees to dir for a key (keyDirs), unless an earlier key did: a
// second keyDirs of a directory, with open or without after a first with
// open, would leave everything as it is. It returns dir's stage. Keys in
// a directory being seen to wait for it.
func (u *sftpUploads) dir(dir string, open bool) (*transport.Stage, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	d := u.dirs[dir]
	if d == nil || open && !d.open {
		if err := keyDirs(u.c, dir, open); err != nil {
			return nil, err
		}
		if d == nil {
			d = &keyDir{}
			u.dirs[dir] = d
		}
		d.open = d.open || open
	}
	if d.stage == nil {
		s, err := transport.NewStage(u.c, dir)
		if err != nil {
			return nil, err
		}
		d.stage = s
	}
	return d.stage, nil
}

// close removes the stages, once every key is done with them.
func (u *sftpUploads) close() {
	for _, d := range u.dirs {
		if d.stage != nil {
			d.stage.Remove()
		}
	}
}

// keyDirs creates dir and its missing parents dirMode (with o+x when
// open) and, when open, gives o+x to each directory on the way that
// root:root owns and closes to others. A symlink is left as it is.
func keyDirs(c *transport.SFTP, dir string, open bool) error {
	made := os.FileMode(dirMode)
	if open {
		made |= 0o001
	}
	var missing []string
	for d := dir; ; d = path.Dir(d) {
		fi, err := c.Lstat(d)
		if errors.Is(err, fs.ErrNotExist) {
			missing = append(missing, d)
		} else if err != nil {
			return fmt.Errorf("stat %s: %w", d, err)
		} else if !open {
			break // it and those above stay as they are
		} else if st, ok := fi.Sys().(*sftp.FileStat); ok && fi.IsDir() && st.UID == 0 && st.GID == 0 && fi.Mode()&0o001 == 0 {
			m := fi.Mode() & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky)
			if err := c.Chmod(d, m|0o001); err != nil {
				return fmt.Errorf("chmod o+x %s: %w", d, err)
			}
		}
		if d == "/" {
			break
		}
	}
	for i := len(missing) - 1; i >= 0; i-- {
		// Made with its mode from the start; the chmod makes it exact
		// whatever the host's umask.
		if err := c.MkdirMode(missing[i], made); err != nil {
			return fmt.Errorf("mkdir %s: %w", missing[i], err)
		}
		if err := c.Chmod(missing[i], made); err != nil {
			return fmt.Errorf("chmod %s: %w", missing[i], err)
		}
	}
	return nil
}

// writeSynced writes value in pipelined chunks and, with sync, asks the
// server to fsync it (OpenSSH's fsync@openssh.com); a server without the
// extension still gets the data.
func writeSynced(f *sftp.File, value *sending, sync bool) error {
	if _, err := f.ReadFrom(value); err != nil {
		return err
	}
	if err := value.short(); err != nil {
		return err
	}
	if !sync {
		return nil
	}
	if err := f.Sync(); err != nil && !errors.Is(err, sftp.ErrSSHFxOpUnsupported) {
		var se *sftp.StatusError
		if !errors.As(err, &se) || se.FxCode() != sftp.ErrSSHFxOpUnsupported {
			return err
		}
	}
	return nil
}

// inRun reports whether dest is under /run, a tmpfs on every systemd
// system (NixOS's /run/keys included): an fsync there has no disk to
// reach, and a request per key is what it would cost.
func inRun(dest string) bool { return strings.HasPrefix(path.Clean(dest), "/run/") }

// uploadShell writes value to dest with the shell (host.WriteKeyCommand),
// as root: for logins that are not root, and hosts without sftp.
func (b *Batch) uploadShell(ctx context.Context, dest string, id [2]int, mode string, open bool, value *sending) error {
	in := b.instance
	cmd := host.WriteKeyCommand(in, b.u.Privilege, dest, id[0], id[1], mode, open)
	var stderr bytes.Buffer
	stdin := io.MultiReader(strings.NewReader(strconv.FormatInt(value.size, 10)+"\n"), value)
	code, err := b.u.Host.Run(ctx, in.Name, cmd, stdin, io.Discard, &stderr)
	if err == nil && code != 0 {
		err = fmt.Errorf("exit %d: %s", code, strings.TrimSpace(stderr.String()))
	}
	if err == nil {
		err = value.short() // the host would have said so
	}
	return err
}
