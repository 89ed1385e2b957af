package cli_test

import (
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/nix-hive/nix-hive/lab"
)

// profileUser owns the test profiles; its home is /run/nixhive-alice,
// which each lab host has of its own (/run is the host's).
const profileUser = "nixhive-alice"

// A system's profiles beside the system one (deploy-rs's), such as a
// user's home-manager generation: pushed with the system, set and
// activated as their user once the system is, recorded on the host,
// shown by status, returned with the system when an activation fails
// and by rollback, removed when the hive drops them; a bad profile in
// the hive stops the deploy before any host changes.
func TestDeployProfiles(t *testing.T) {
	f, uid := newProfileLab(t, appLab(t, 2))
	profiles := func(v map[string]string) { f.writeAttrs("profiles.nix", v) }
	const (
		link = profileLink
		home = "/run/" + profileUser + "/.nix-hive-test/home"
	)
	profileOf := func(host string) string { t.Helper(); return profileOf(t, f, uid, host) }
	// activated is what the profile's activate last wrote on host.
	activated := func(host string) string {
		b, _ := os.ReadFile(f.lab.Host(host).Path(home))
		return strings.TrimSpace(string(b))
	}
	record := func(host string) string {
		b, _ := os.ReadFile(f.lab.Host(host).Path("/nix/var/nix-hive/profiles"))
		return strings.TrimSpace(string(b))
	}
	wantProfile := func(host, version string) string {
		t.Helper()
		p := f.state().Systems[host].Profiles["home"]
		if p == "" || !strings.HasSuffix(p, "-home-profile-"+version) {
			t.Fatalf("hive.state has no home profile %s for %s: %q", version, host, p)
		}
		if got := profileOf(host); got != p {
			t.Errorf("%s: the home profile leads to %q, want %s", host, got, p)
		}
		if _, err := os.Stat(f.lab.Host(host).Path(p + "/activate")); err != nil {
			t.Errorf("%s: the profile's package is not in the host's store: %v", host, err)
		}
		if got, want := activated(host), version+" "+profileUser+" "+link; got != want {
			t.Errorf("%s: the last activation of the profile says %q, want %q (version, user, PROFILE)", host, got, want)
		}
		if got, want := record(host), "home:"+profileUser+":"+p+":activate"; got != want {
			t.Errorf("%s: the host's record of its profiles: %q, want %q", host, got, want)
		}
		return p
	}
	deploy := func(want int, args ...string) string {
		t.Helper()
		code, out, _ := f.run(append([]string{"deploy"}, args...)...)
		if code != want {
			t.Fatalf("deploy %s: exit %d, want %d", strings.Join(args, " "), code, want)
		}
		return out
	}

	// Deployed with the system, activated as its user.
	profiles(map[string]string{"app-1": `home.args.version = "1";`, "app-2": `home.args.version = "1";`})
	deploy(0)
	v1 := map[string]string{}
	for _, h := range []string{"app-1", "app-2"} {
		wantProfile(h, "1")
		v1[h] = f.built(h)
		if got := f.system(h); got.active != v1[h] {
			t.Errorf("%s runs %s, want %s", h, got.active, v1[h])
		}
	}
	out := deploy(0)
	summaryHas(t, out, "app-1", "unchanged")
	summaryHas(t, out, "app-2", "unchanged")
	code, out, _ := f.run("status")
	if code != 0 || !strings.Contains(out, "PROFILES") || strings.Count(out, "home ("+profileUser+")") != 2 {
		t.Errorf("status: exit %d, want 0 and both hosts' home profile:\n%s", code, out)
	}

	// A new generation of the profile alone: status sees the drift, the
	// deploy activates it and leaves the system as it is.
	profiles(map[string]string{"app-1": `home.args.version = "2";`, "app-2": `home.args.version = "1";`})
	code, out, _ = f.run("status", "app-1")
	if code != 1 || !strings.Contains(out, "profiles differ") {
		t.Errorf("status with a new profile: exit %d, want 1 and \"profiles differ\":\n%s", code, out)
	}
	if code, out, _ = f.run("plan", "app-1"); code != 0 || !strings.Contains(out, "1 get other profiles beside the same system (app-1)") {
		t.Errorf("plan with a new profile: exit %d, want it to say app-1's profiles change:\n%s", code, out)
	}
	deploy(0, "app-1")
	home2 := wantProfile("app-1", "2")
	if got := f.system("app-1"); got.active != v1["app-1"] || got.profile != v1["app-1"] {
		t.Errorf("app-1's system changed with its profile alone: %+v", got)
	}

	// A profile whose activation fails takes the new system back with it:
	// the host returns to the system and the profile it had.
	f.variants(map[string]string{"app-1": `version = "2";`})
	profiles(map[string]string{"app-1": `home.args = { version = "3"; fails = true; };`, "app-2": `home.args.version = "1";`})
	out = deploy(1, "app-1")
	summaryHas(t, out, "app-1", "rolled-back", "profile home of "+profileUser)
	if got := f.system("app-1"); got.active != v1["app-1"] || got.profile != v1["app-1"] {
		t.Errorf("after the failed profile app-1 runs %+v, want %s", got, v1["app-1"])
	}
	if got := profileOf("app-1"); got != home2 {
		t.Errorf("after the failed profile, app-1's home profile leads to %s, want %s", got, home2)
	}
	if got := record("app-1"); !strings.Contains(got, home2) {
		t.Errorf("after the failed profile, the host's record: %q", got)
	}

	// backOnV1 checks app-1 runs its first system again, with the
	// profile's second generation set and activated again.
	backOnV1 := func(when string) {
		t.Helper()
		if got := f.system("app-1"); got.active != v1["app-1"] {
			t.Errorf("%s app-1 runs %s, want %s", when, got.active, v1["app-1"])
		}
		if got := profileOf("app-1"); got != home2 {
			t.Errorf("%s app-1's home profile leads to %s, want %s", when, got, home2)
		}
		if got, want := activated("app-1"), "2 "+profileUser+" "+link; got != want {
			t.Errorf("%s the profile's activation says %q, want %q", when, got, want)
		}
	}

	// A user the host lacks: refused there, and nothing changes.
	profiles(map[string]string{"app-1": `home = { args.version = "2"; user = "nixhive-nouser"; };`, "app-2": `home.args.version = "1";`})
	out = deploy(1, "app-1")
	summaryHas(t, out, "app-1", "rolled-back", "profile home: nixhive-nouser is no user on the host")
	if got := profileOf("app-1"); got != home2 || f.system("app-1").active != v1["app-1"] {
		t.Errorf("after a profile of no user, app-1 has the profile %s and runs %s", got, f.system("app-1").active)
	}

	// A good pair, then rollback: the previous good generation comes
	// back with the profile that went with it.
	profiles(map[string]string{"app-1": `home.args.version = "4";`, "app-2": `home.args.version = "1";`})
	deploy(0, "app-1")
	wantProfile("app-1", "4")
	if got := f.system("app-1"); got.active != f.built("app-1") || got.active == v1["app-1"] {
		t.Errorf("app-1 runs %s, want its version 2", got.active)
	}
	code, out, _ = f.run("rollback", "app-1")
	if code != 0 {
		t.Fatalf("rollback: exit %d\n%s", code, out)
	}
	backOnV1("after rollback (the profile of that generation)")

	// A failed post-activation check returns the profile with the system.
	f.write("hive.star", `
on_failure = "rollback"

def post_activate(ctx):
    if ctx.instance.name == "app-1":
        fail("health check failed on app-1")
`)
	profiles(map[string]string{"app-1": `home.args.version = "5";`, "app-2": `home.args.version = "1";`})
	out = deploy(1, "app-1")
	summaryHas(t, out, "app-1", "rolled-back", "health check failed")
	backOnV1("after the failed check")
	if err := os.Remove(filepath.Join(f.dir, "hive.star")); err != nil {
		t.Fatal(err)
	}

	// Dropped from the hive: the profile is removed.
	profiles(map[string]string{"app-1": `home.args.version = "4";`})
	deploy(0, "app-2")
	if got := profileOf("app-2"); got != "" || record("app-2") != "" {
		t.Errorf("app-2 keeps the profile the hive dropped: %q, record %q", got, record("app-2"))
	}
	if got := f.system("app-2"); got.active != v1["app-2"] {
		t.Errorf("app-2 runs %s, want %s", got.active, v1["app-2"])
	}

	// Bad profiles are hive errors, and nothing changes.
	for _, c := range []struct{ name, profile, want string }{
		{"a user that is no login", `home = { args.version = "5"; user = "../root"; };`, `system "app-1": profile "home": attribute user: "../root" is not a POSIX login name`},
		{"a command outside the package", `home = { args.version = "5"; activate = "../../bin/sh"; };`, `system "app-1": profile "home": attribute activate: "../../bin/sh" is not a command inside the profile`},
		{"a name that is no file name", `".home" = { args.version = "5"; };`, `system "app-1": profile ".home": the name is not a profile name`},
		{"a path that is no package", `home = { path = "/nix/store/00000000000000000000000000000000-x"; };`, `system app-1: profile home: attribute path: expected a derivation`},
	} {
		profiles(map[string]string{"app-1": c.profile})
		code, _, errOut := f.run("deploy", "app-1")
		if code != 2 || !strings.Contains(errOut, c.want) {
			t.Errorf("%s: exit %d, want 2 and %q in:\n%s", c.name, code, c.want, errOut)
		}
		if got := profileOf("app-1"); got != home2 || f.system("app-1").active != v1["app-1"] {
			t.Errorf("%s: app-1 changed: profile %s, system %s", c.name, got, f.system("app-1").active)
		}
	}
}

// ensureProfileUser makes the test profiles' user (once per machine:
// lab hosts share its /etc/passwd) and returns its uid and gid.
// A boot that fails returns the profiles beside the system one with the
// system: the deploy's boot job set each profile's new generation (set,
// not activated), the new system did not come up, and once the host was
// back on its old one each profile leads where it did when the deploy
// locked the host, and the host's record says so.
func TestDeployBootFallbackReturnsProfiles(t *testing.T) {
	f, uid := newProfileLab(t, appLabWith(t, 1, lab.Config{BootLoader: map[string]string{"app-1": lab.SystemdBoot}}))
	profiles := func(v map[string]string) { f.writeAttrs("profiles.nix", v) }
	record := func() string {
		b, _ := os.ReadFile(f.lab.Host("app-1").Path("/nix/var/nix-hive/profiles"))
		return strings.TrimSpace(string(b))
	}
	profiles(map[string]string{"app-1": `home.args.version = "1";`})
	if code, _, _ := f.run("deploy", "--connect-timeout", faultConnect); code != 0 {
		t.Fatalf("first deploy: exit %d", code)
	}
	v1, p1 := f.built("app-1"), f.state().Systems["app-1"].Profiles["home"]
	if got := profileOf(t, f, uid, "app-1"); p1 == "" || got != p1 {
		t.Fatalf("after the first deploy the home profile leads to %q, want %q", got, p1)
	}

	f.variants(map[string]string{"app-1": `version = "2"; bootFails = true;`})
	profiles(map[string]string{"app-1": `home.args.version = "2";`})
	code, out, errOut := f.run("deploy", "--goal", "boot", "--reboot", "--reboot-timeout", "60s", "--connect-timeout", faultConnect)
	if code == 0 {
		t.Fatal("a boot that fails: exit 0")
	}
	summaryHas(t, out, "app-1", "rolled-back", "rolled back (boot)")
	if want := "app-1 [wave 1] rollback ok: the system profile and the boot loader's default are " + v1 + " again"; !strings.Contains(errOut, want) {
		t.Errorf("no %q in:\n%s", want, errOut)
	}
	p2 := f.state().Systems["app-1"].Profiles["home"]
	if p2 == "" || p2 == p1 {
		t.Fatalf("the second deploy's home profile is %q, want a new one (first %q)", p2, p1)
	}
	if got := f.system("app-1"); got.active != v1 || got.profile != v1 {
		t.Errorf("app-1 runs %+v, want %s", got, v1)
	}
	if n := f.lab.Host("app-1").Boots(); n != 2 {
		t.Errorf("app-1 booted %d times, want 2 (the failed boot, then the default)", n)
	}
	if got := profileOf(t, f, uid, "app-1"); got != p1 {
		t.Errorf("after the boot fallback the home profile leads to %q, want %q (not the new %q)", got, p1, p2)
	}
	if got, want := record(), "home:"+profileUser+":"+p1+":activate"; got != want {
		t.Errorf("after the boot fallback the host's record of its profiles is %q, want %q", got, want)
	}
}

// profileLink is the test profile's link on a host.
const profileLink = "/nix/var/nix/profiles/per-user/" + profileUser + "/home"

// newProfileLab is a fault lab on l whose systems carry profiles beside
// the system one, from profiles.nix (each host's attributes, as
// writeAttrs writes them), owned by profileUser; it returns the user's
// uid.
func newProfileLab(t *testing.T, l *lab.Lab) (*faultLab, int) {
	f := newFaultLabOf(t, l)
	uid, gid := ensureProfileUser(t)
	root, _ := filepath.Abs("..")
	for _, h := range f.lab.Hosts {
		home := h.Path("/run/" + profileUser)
		if err := os.MkdirAll(home, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(home, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	f.write("hive.nix", fmt.Sprintf(`let
  lab = import ./lab.nix;
  ts = import %q;
  prof = import %q;
  variants = import ./variants.nix;
  profiles = import ./profiles.nix;
in {
  signing.keyFile = "keys/hive.sec";
  systems = builtins.mapAttrs (n: _: {
    toplevel = ts ({ name = "app"; } // (variants.${n} or { }));
    profiles = builtins.mapAttrs (pn: p: { user = %q; } // removeAttrs p [ "args" ] // { path = p.path or (prof ({ name = pn; } // (p.args or { }))); }) (profiles.${n} or { });
  }) lab;
  instances = builtins.mapAttrs (n: v: v // { system = n; }) lab;
}`, filepath.Join(root, "examples", "testsystems"), filepath.Join(root, "examples", "testsystems", "profile.nix"), profileUser))
	f.writeAttrs("profiles.nix", nil)
	return f, uid
}

// profileOf is where host's test profile leads ("" when it has none),
// checking the links are its user's (uid).
func profileOf(t *testing.T, f *faultLab, uid int, host string) string {
	t.Helper()
	h := f.lab.Host(host)
	gen, err := os.Readlink(h.Path(profileLink))
	if err != nil {
		return ""
	}
	for _, l := range []string{profileLink, filepath.Join(filepath.Dir(profileLink), gen)} {
		if fi, err := os.Lstat(h.Path(l)); err != nil || int(fi.Sys().(*syscall.Stat_t).Uid) != uid {
			t.Errorf("%s: %s is not %s's", host, l, profileUser)
		}
	}
	p, _ := os.Readlink(h.Path(filepath.Join(filepath.Dir(profileLink), gen)))
	return p
}

func ensureProfileUser(t *testing.T) (int, int) {
	t.Helper()
	u, err := user.Lookup(profileUser)
	if err != nil {
		out, err := exec.Command("useradd", "--home-dir", "/run/"+profileUser, "--no-create-home", "--user-group", "--shell", "/bin/sh", "--password", "*", profileUser).CombinedOutput()
		if err != nil {
			t.Fatalf("useradd: %v\n%s", err, out)
		}
		t.Cleanup(func() { exec.Command("userdel", profileUser).Run() })
		if u, err = user.Lookup(profileUser); err != nil {
			t.Fatal(err)
		}
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return uid, gid
}
