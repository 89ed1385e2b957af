package cli_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/nix-hive/nix-hive/internal/nixtest"
	"github.com/nix-hive/nix-hive/lab"
	"github.com/nix-hive/nix-hive/lab/labtest"
)

// keysLab is a lab whose hive gives every host keys from each source:
// app-1 has sftp, app-2 has none (the shell takes over), app-3 has a key
// whose command fails. Every value holds a canary that must turn up
// nowhere but in the key files.
type keysLab struct {
	*faultLab
	canary  string
	secrets string // directory of the file and command keys' sources
	values  map[string]string
}

func newKeysLab(t *testing.T) *keysLab {
	nixtest.Require(t)
	l := labtest.New(t, lab.Config{Names: []string{"app-1", "app-2", "app-3"},
		NoSFTP: []string{"app-2"}, NoGzip: []string{"app-2"}})
	root, _ := filepath.Abs("..")
	b := make([]byte, 8)
	rand.Read(b)
	k := &keysLab{faultLab: &faultLab{t: t, lab: l, dir: t.TempDir()}, canary: "CANARY" + hex.EncodeToString(b), secrets: t.TempDir()}
	k.values = map[string]string{
		"db":     k.canary + "-db\n",
		"tls":    k.canary + "-tls\nsecond line\n",
		"shared": k.canary + "-shared",
	}
	writeFile(t, filepath.Join(k.secrets, "tls"), k.values["tls"])
	writeFile(t, filepath.Join(k.secrets, "shared"), k.values["shared"])
	k.write("lab.nix", l.HiveNix())
	k.write("hive.nix", fmt.Sprintf(`let
  lab = import ./lab.nix;
  ts = import %q;
  version = builtins.readFile ./version;
in {
  signing.keyFile = "keys/hive.sec";
  defaults.keys.shared = { command = [ "cat" %q ]; };
  systems.app = {
    toplevel = ts { name = "app"; inherit version; };
    keys.tls = { file = %q; user = "nobody"; group = "nogroup"; mode = "0440"; };
  };
  instances = builtins.mapAttrs (n: v: v // {
    system = "app";
    keys.db = { text = %q; upload = "post-activation"; };
  }) lab // {
    app-3 = lab.app-3 // { system = "app"; keys.broken = { command = "echo %s-broken; echo no such secret >&2; exit 3"; }; };
  };
}`, filepath.Join(root, "examples", "testsystems"), filepath.Join(k.secrets, "shared"), filepath.Join(k.secrets, "tls"),
		strings.TrimSuffix(k.values["db"], "\n")+"\n", k.canary))
	k.write("version", "1")
	keygenTrusted(t, k.run, l, nil)
	return k
}

type keyFile struct {
	content     string
	mode        fs.FileMode
	owner, grup int
}

func (k *keysLab) keyOn(host, name string) (keyFile, error) {
	p := k.lab.Host(host).Path("/run/keys/" + name)
	b, err := os.ReadFile(p)
	if err != nil {
		return keyFile{}, err
	}
	st, err := os.Stat(p)
	if err != nil {
		return keyFile{}, err
	}
	sys := st.Sys().(*syscall.Stat_t)
	return keyFile{string(b), st.Mode().Perm(), int(sys.Uid), int(sys.Gid)}, nil
}

func lookupID(t *testing.T, db, name string) int {
	out, err := exec.Command("getent", db, name).Output()
	if err != nil {
		t.Fatalf("getent %s %s: %v", db, name, err)
	}
	var id int
	fmt.Sscan(strings.Split(string(out), ":")[2], &id)
	return id
}

// Keys from text, a file and a command arrive with their content, owner
// and mode, over sftp and without it; pre-activation keys are there when
// the system activates, post-activation ones come after; a key whose
// command fails fails its host before anything is written there.
func TestKeysDeploy(t *testing.T) {
	k := newKeysLab(t)
	scan := scanCmdlines(k.canary)
	code, out, errOut := k.run("deploy")
	leaked := scan()
	if code == 0 {
		t.Error("exit 0 although app-3's key command failed")
	}
	summaryHas(t, out, "app-1", " ok ")
	summaryHas(t, out, "app-2", " ok ")
	summaryHas(t, out, "app-3", "failed", "keys", "key broken: command /bin/sh exited 3: no such secret")
	nobody, nogroup := lookupID(t, "passwd", "nobody"), lookupID(t, "group", "nogroup")
	want := map[string]keyFile{
		"db":     {k.values["db"], 0o400, 0, 0},
		"tls":    {k.values["tls"], 0o440, nobody, nogroup},
		"shared": {k.values["shared"], 0o400, 0, 0},
	}
	for _, h := range []string{"app-1", "app-2"} {
		for name, w := range want {
			got, err := k.keyOn(h, name)
			if err != nil || got != w {
				t.Errorf("%s /run/keys/%s: %+v %v, want %+v", h, name, got, err, w)
			}
		}
		seen, _ := os.ReadFile(k.lab.Host(h).Path("/run/nix-hive-test/keys-seen"))
		if !strings.HasSuffix(strings.TrimSpace(string(seen)), "switch: shared tls") {
			t.Errorf("%s at activation had keys %q, want the pre-activation ones (shared tls), not db", h, seen)
		}
	}
	// app-2 has no gzip: its job script came uncompressed, and is the
	// one app-1 unpacked from gzip.
	if out, err := k.lab.Host("app-2").Exec(context.Background(), "sh", "-c", "command -v gzip"); err == nil {
		t.Errorf("app-2 has gzip (%s), the lab did not hide it", out)
	}
	if a, b := jobScriptOn(t, k.lab.Host("app-1")), jobScriptOn(t, k.lab.Host("app-2")); a != b || !strings.Contains(a, "switch-to-configuration") {
		t.Errorf("the job scripts on app-1 (gzip) and app-2 (plain) differ:\n%s\n---\n%s", a, b)
	}
	if ents, _ := os.ReadDir(k.lab.Host("app-3").Path("/run/keys")); len(ents) != 0 {
		t.Errorf("app-3 got %d entries in /run/keys although a key of its failed", len(ents))
	}
	if _, err := os.Stat(k.lab.Host("app-3").Path("/run/current-system")); err == nil {
		t.Error("app-3 was activated although a key of its failed")
	}
	if code, _, errOut := k.run("scp", filepath.Join(k.dir, "version"), "app-2:/tmp/v"); code == 0 || !strings.Contains(errOut, "subsystem") {
		t.Errorf("app-2 offers sftp after all (scp exit %d), the shell fallback was not exercised: %s", code, errOut)
	}
	k.assertNowhere(t, leaked, out+errOut)
}

// scanCmdlines watches every process's command line on this machine (lab
// hosts' included: their pid namespaces are below this one) until the
// returned function is called, which reports those that held canary.
func scanCmdlines(canary string) func() []string {
	var (
		mu    sync.Mutex
		found []string
	)
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			ents, _ := os.ReadDir("/proc")
			for _, e := range ents {
				b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
				if err == nil && bytes.Contains(b, []byte(canary)) {
					mu.Lock()
					found = append(found, strings.ReplaceAll(string(b), "\x00", " "))
					mu.Unlock()
				}
			}
		}
	}()
	return func() []string {
		close(stop)
		<-done
		mu.Lock()
		defer mu.Unlock()
		return found
	}
}

// assertNowhere: the canary is in no Nix store (this machine's and every
// host's), no output, not in hive.state, the inventory, plan or keys
// list, and was on no command line.
func (k *keysLab) assertNowhere(t *testing.T, cmdlines []string, outputs ...string) {
	t.Helper()
	for _, c := range cmdlines {
		if !strings.Contains(c, "-broken") { // the failing command's own text holds it on purpose
			t.Errorf("a command line held a secret: %s", c)
		}
	}
	_, jsonOut, jsonErr := k.run("--json", "deploy", "--no", "build")
	_, plan, _ := k.run("plan")
	_, inv, _ := k.run("build")
	_, list, _ := k.run("keys", "list")
	_, listJSON, _ := k.run("--json", "keys", "list")
	state, _ := os.ReadFile(filepath.Join(k.dir, "hive.state"))
	texts := append(outputs, jsonOut, jsonErr, plan, inv, list, listJSON, string(state))
	for i, s := range texts {
		if strings.Contains(strings.ReplaceAll(s, k.canary+"-broken", ""), k.canary) {
			t.Errorf("output %d holds a secret:\n%s", i, s)
		}
	}
	stores := []string{"/nix/store"}
	for _, h := range k.lab.Hosts {
		stores = append(stores, h.Path("/nix/store"))
	}
	for _, s := range stores {
		out, err := exec.Command("grep", "-rlF", "--", k.canary, s).CombinedOutput()
		var ee *exec.ExitError
		switch {
		case err == nil:
			t.Errorf("the secret is in %s: %s", s, out)
		case !errors.As(err, &ee) || ee.ExitCode() != 1:
			t.Errorf("grep %s: %v: %s", s, err, out)
		}
	}
}

// An upload cut off half-way (the connection drops) leaves the old key or
// the new one, never a part of it, and nothing readable by others.
// jobScriptOn is the job script of the only activation job on h.
func jobScriptOn(t *testing.T, h *lab.Host) string {
	t.Helper()
	m, _ := filepath.Glob(h.Path("/run/nix-hive/jobs/*/job.sh"))
	if len(m) != 1 {
		t.Fatalf("%s: %d activation jobs, want 1", h.Name, len(m))
	}
	b, err := os.ReadFile(m[0])
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestKeysUploadInterrupted(t *testing.T) {
	k := newKeysLab(t)
	if code, _, _ := k.run("keys", "upload", "app-1", "app-2"); code != 0 {
		t.Fatal("first upload failed")
	}
	line := k.canary + "-new-tls\n"
	big := strings.Repeat(line, 64<<20/len(line)) // 64 MiB: the upload takes a while
	writeFile(t, filepath.Join(k.secrets, "tls"), big)
	for _, host := range []string{"app-1", "app-2"} { // over sftp, through the shell
		t.Run(host, func(t *testing.T) {
			h := k.lab.Host(host)
			// The host is frozen once the upload has begun, so that the cut
			// lands mid-way however loaded the machine is; an upload that
			// finished before the freeze proves nothing and is tried again.
			var r *running
			for attempt := 1; ; attempt++ {
				r = startIn(t, k.dir, "keys", "upload", host)
				err := waitFor("an upload to start on "+host, func() bool {
					return uploading(h.Path("/run/keys"))
				})
				if err != nil {
					t.Fatal(err)
				}
				if err := h.Faults().Freeze(); err != nil {
					t.Fatal(err)
				}
				if uploading(h.Path("/run/keys")) {
					break
				}
				h.Faults().Thaw()
				r.wait()
				if attempt == 5 {
					t.Fatal("5 uploads finished before the host could be frozen")
				}
				t.Logf("attempt %d: the upload finished before the freeze; again", attempt)
			}
			// In flight, the temporary file already has the owner bits of
			// the key's mode (0440: 0400), whatever the host's umask.
			files, _ := filepath.Glob(h.Path("/run/keys/.nix-hive-*/*"))
			if len(files) == 0 {
				t.Fatal("frozen mid-upload, yet no temporary file in a staging directory")
			}
			for _, fn := range files {
				if fi, err := os.Stat(fn); err == nil && fi.Mode().Perm() != 0o400 {
					t.Errorf("in flight, %s is %v (%d bytes), want 0400", fn, fi.Mode().Perm(), fi.Size())
				}
			}
			t.Logf("in flight: %d temporary files, each 0400", len(files))
			n, err := h.Faults().CutConnections()
			h.Faults().Thaw()
			if err != nil || n == 0 {
				t.Fatalf("cut: %d %v", n, err)
			}
			if code := r.wait(); code == 0 {
				t.Error("the upload went on as if nothing had happened")
			}
			got, err := k.keyOn(host, "tls")
			switch {
			case err == nil && got.content == k.values["tls"]:
				t.Logf("%s still has the old key", host)
			case err == nil && got.content == big:
				t.Logf("%s has the new key, whole", host)
			default:
				t.Errorf("/run/keys/tls after the cut: %d bytes, %v; want the old or the new key whole", len(got.content), err)
			}
			// What the cut leaves gives others nothing: a staging directory
			// is 0700, and a file in it has no group or other bits (it is
			// created with the owner bits of the key's mode).
			filepath.WalkDir(h.Path("/run/keys"), func(p string, d fs.DirEntry, err error) error {
				info, _ := d.Info()
				if err != nil || info == nil || !strings.Contains(p, "/.nix-hive-") {
					return nil
				}
				switch {
				case info.IsDir() && info.Mode().Perm() != 0o700:
					t.Errorf("staging directory %s is %v", p, info.Mode())
				case !info.IsDir() && info.Mode().Perm()&0o077 != 0:
					t.Errorf("%s (%d bytes) is %v: open to group or others", p, info.Size(), info.Mode())
				}
				return nil
			})
		})
	}
}

// uploading reports whether a key upload's temporary file is in a
// staging directory of dir.
func uploading(dir string) bool {
	files, _ := filepath.Glob(filepath.Join(dir, ".nix-hive-*", "*"))
	return len(files) > 0
}

// A key whose owner the host does not have fails that host before any of
// its keys is written; --no keys deploys without them.
func TestKeysMissingOwner(t *testing.T) {
	k := newKeysLab(t)
	editFile(t, filepath.Join(k.dir, "hive.nix"), `user = "nobody";`, `user = "nix-hive-no-such-user";`)
	code, out, errOut := k.run("keys", "upload", "app-1")
	if code == 0 || !strings.Contains(out+errOut, "no user nix-hive-no-such-user on the host") {
		t.Errorf("exit %d, want a failure naming the missing user", code)
	}
	if ents, _ := os.ReadDir(k.lab.Host("app-1").Path("/run/keys")); len(ents) != 0 {
		t.Errorf("app-1 has %d entries in /run/keys although its keys could not all be placed", len(ents))
	}

	// --no keys leaves keys out entirely: the missing owner no longer
	// matters, the system is switched to and nothing lands in /run/keys.
	if code, out, errOut := k.run("deploy", "--no", "keys", "app-1"); code != 0 {
		t.Fatalf("deploy --no keys: exit %d\n%s%s", code, out, errOut)
	}
	if _, err := os.Stat(k.lab.Host("app-1").Path("/run/current-system")); err != nil {
		t.Errorf("deploy --no keys did not activate app-1: %v", err)
	}
	if ents, _ := os.ReadDir(k.lab.Host("app-1").Path("/run/keys")); len(ents) != 0 {
		t.Errorf("deploy --no keys put %d entries in app-1's /run/keys", len(ents))
	}
}

// A key is readable by the owner and the group it names, read as those
// users on the hosts with no other groups, over sftp (app-1) and through
// the shell (app-2): /run/keys and the directories nix-hive creates for
// keys let others search them (0751), never list them, so each key's own
// owner, group and mode decide; a directory of keys only root reads stays
// 0750. A /run/keys with a group of its own (NixOS's root:keys 0750) is
// left as it is: its group's members reach the keys.
func TestKeysReadableByTheirOwners(t *testing.T) {
	k := newKeysLab(t)
	editFile(t, filepath.Join(k.dir, "hive.nix"), `keys.tls = {`, `keys.app-tls = { text = "app tls"; dest = "/run/app/tls/key.pem"; user = "nobody"; group = "nogroup"; mode = "0440"; };
    keys.app-root = { text = "app root"; dest = "/run/app/root/key.pem"; };
    keys.tls = {`)
	if code, _, _ := k.run("keys", "upload", "app-1", "app-2"); code != 0 {
		t.Fatal("keys upload failed")
	}
	ctx := context.Background()
	nobody := []string{"--reuid=65534", "--regid=65534", "--clear-groups"}
	member := []string{"--reuid=4242", "--regid=4242", "--groups=65534"} // in nogroup, not its owner
	stranger := []string{"--reuid=4242", "--regid=4242", "--clear-groups"}
	as := func(h *lab.Host, who []string, args ...string) (string, error) {
		out, err := h.Exec(ctx, append(append([]string{"setpriv"}, who...), args...)...)
		return string(out), err
	}
	mode := func(h *lab.Host, p string) (fs.FileMode, int) {
		st, err := os.Stat(h.Path(p))
		if err != nil {
			t.Fatal(err)
		}
		return st.Mode().Perm(), int(st.Sys().(*syscall.Stat_t).Gid)
	}
	for _, host := range []string{"app-1", "app-2"} {
		h := k.lab.Host(host)
		for _, r := range []struct {
			who  []string
			path string
			want string
		}{
			{nobody, "/run/keys/tls", k.values["tls"]},
			{member, "/run/keys/tls", k.values["tls"]},
			{nobody, "/run/app/tls/key.pem", "app tls"},
		} {
			if got, err := as(h, r.who, "cat", r.path); err != nil || got != r.want {
				t.Errorf("%s: setpriv %s cat %s: %q %v, want the key", host, strings.Join(r.who, " "), r.path, got, err)
			}
		}
		for _, r := range []struct {
			who  []string
			args []string
		}{
			{stranger, []string{"cat", "/run/keys/tls"}},
			{stranger, []string{"cat", "/run/keys/shared"}},
			{nobody, []string{"cat", "/run/keys/shared"}},
			{nobody, []string{"cat", "/run/app/root/key.pem"}},
			{stranger, []string{"ls", "/run/keys"}},
			{stranger, []string{"ls", "/run/app/tls"}},
		} {
			if out, err := as(h, r.who, r.args...); err == nil {
				t.Errorf("%s: setpriv %s %s succeeded: %q", host, strings.Join(r.who, " "), strings.Join(r.args, " "), out)
			}
		}
		for dir, want := range map[string]fs.FileMode{"/run/keys": 0o751, "/run/app": 0o751, "/run/app/tls": 0o751, "/run/app/root": 0o750} {
			if got, _ := mode(h, dir); got != want {
				t.Errorf("%s: %s is %v, want %v", host, dir, got, want)
			}
		}
	}

	// /run/keys as NixOS keeps it: root:keys 0750 (here gid 96, NixOS's
	// keys). nix-hive leaves it so; the group's members read the key.
	const keysGID = 96
	for _, host := range []string{"app-1", "app-2"} {
		h := k.lab.Host(host)
		if err := os.Chown(h.Path("/run/keys"), 0, keysGID); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(h.Path("/run/keys"), 0o750); err != nil {
			t.Fatal(err)
		}
	}
	if code, _, _ := k.run("keys", "upload", "app-1", "app-2"); code != 0 {
		t.Fatal("keys upload into a root:keys /run/keys failed")
	}
	for _, host := range []string{"app-1", "app-2"} {
		h := k.lab.Host(host)
		if m, gid := mode(h, "/run/keys"); m != 0o750 || gid != keysGID {
			t.Errorf("%s: a root:keys 0750 /run/keys became %v gid %d", host, m, gid)
		}
		if out, err := as(h, nobody, "cat", "/run/keys/tls"); err == nil {
			t.Errorf("%s: nobody, not in keys, read /run/keys/tls through NixOS's /run/keys: %q", host, out)
		}
		inKeys := []string{"--reuid=65534", "--regid=65534", "--groups=" + strconv.Itoa(keysGID)}
		if got, err := as(h, inKeys, "cat", "/run/keys/tls"); err != nil || got != k.values["tls"] {
			t.Errorf("%s: nobody in keys: %q %v, want the key", host, got, err)
		}
	}
}
