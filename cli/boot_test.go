package cli_test

import (
	"context"
	"os"
	"strings"
	"syscall"
	"testing"

	"github.com/nix-hive/nix-hive/lab"
)

// The boot fallback of --goal boot --reboot, on lab hosts with emulated
// boot loaders (lab/bootloader.go): app-1 has systemd-boot, app-2 GRUB
// (with the saved default), app-3 neither.
//
//   - A new system that boots on app-1 becomes the default: the EFI
//     override nix-hive set for the reboot is gone, loader.conf's default
//     (the new generation) decides, and a later reboot starts it again.
//   - A new system that fails to boot on app-2 (its sshd never starts)
//     is left by the lab's watchdog reboot into the old default; the
//     deploy says "rolled back (boot)", exits non-zero, and the host ends
//     with the old system active, in its profile and as GRUB's default.
//   - app-3's boot loader can do neither: the deploy refuses before
//     anything changes there, unless --force.
func TestDeployBootFallback(t *testing.T) {
	f := newFaultLabOf(t, appLabWith(t, 3, lab.Config{BootLoader: map[string]string{"app-1": lab.SystemdBoot, "app-2": lab.GRUB}}))
	v1 := f.baseline()
	f.variants(map[string]string{
		"app-1": `version = "2";`,
		"app-2": `version = "2"; bootFails = true;`,
		"app-3": `version = "2";`,
	})
	v2 := f.build()
	efi := func(name string) string {
		b, _ := os.ReadFile(f.lab.Host("app-1").Path("/boot/.lab-efivars/" + name))
		return strings.TrimSpace(string(b))
	}
	grubenv := func() string {
		b, _ := os.ReadFile(f.lab.Host("app-2").Path("/boot/grub/grubenv"))
		return string(b)
	}
	deploy := func(args ...string) (int, string, string) {
		return f.run(append([]string{"deploy", "--no", "build", "--goal", "boot", "--reboot", "--reboot-timeout", "60s", "--connect-timeout", faultConnect}, args...)...)
	}

	t.Run("a boot that succeeds becomes the default", func(t *testing.T) {
		code, out, errOut := deploy("app-1")
		if code != 0 {
			t.Fatalf("exit %d", code)
		}
		summaryHas(t, out, "app-1", " ok ")
		for _, want := range []string{
			"app-1 [wave 1] reboot info: systemd-boot: the next boot starts nixos-generation-2.conf once; nixos-generation-1.conf stays the default",
			"app-1 [wave 1] reboot ok: booted " + v2["app-1"] + "; its entry nixos-generation-2.conf is the default",
		} {
			if !strings.Contains(errOut, want) {
				t.Errorf("no %q in:\n%s", want, errOut)
			}
		}
		if got := f.system("app-1"); got.active != v2["app-1"] || got.profile != v2["app-1"] {
			t.Errorf("app-1 runs %+v, want %s", got, v2["app-1"])
		}
		if d, o := efi("LoaderEntryDefault"), efi("LoaderEntryOneShot"); d != "" || o != "" {
			t.Errorf("EFI variables left: default %q, one-shot %q; want none (loader.conf decides)", d, o)
		}
		if n := f.lab.Host("app-1").Boots(); n != 1 {
			t.Errorf("app-1 booted %d times, want 1", n)
		}
		// Good only once it booted and answered.
		if l := f.lastActivation("app-1"); !strings.HasSuffix(l, " boot "+v2["app-1"]+" ok") {
			t.Errorf("app-1's record of the activation: %q, want ok", l)
		}
		// The next boot, nix-hive's no longer, starts the new system too.
		// The reboot kills the command with the rest of the host: its
		// error says nothing; the boot count does.
		f.lab.Host("app-1").Exec(context.Background(), "reboot")
		waitUntil(t, "app-1's second boot", func() bool { return f.lab.Host("app-1").Boots() == 2 })
		if got := f.system("app-1"); got.active != v2["app-1"] {
			t.Errorf("after another reboot app-1 runs %s, want %s", got.active, v2["app-1"])
		}
	})

	t.Run("a boot that fails is rolled back", func(t *testing.T) {
		code, out, errOut := deploy("app-2")
		if code == 0 {
			t.Fatal("a boot that fails: exit 0")
		}
		summaryHas(t, out, "app-2", "rolled-back", "rolled back (boot)")
		for _, want := range []string{
			`app-2 [wave 1] reboot info: grub: the next boot starts NixOS once; NixOS - All configurations>NixOS - Configuration 1 (lab) stays the default`,
			"app-2 [wave 1] rollback ok: the system profile and the boot loader's default are " + v1["app-2"] + " again",
		} {
			if !strings.Contains(errOut, want) {
				t.Errorf("no %q in:\n%s", want, errOut)
			}
		}
		if got := f.system("app-2"); got.active != v1["app-2"] || got.profile != v1["app-2"] {
			t.Errorf("app-2 runs %+v, want %s", got, v1["app-2"])
		}
		// The failed boot, then the watchdog's into the default.
		if n := f.lab.Host("app-2").Boots(); n != 2 {
			t.Errorf("app-2 booted %d times, want 2", n)
		}
		// The generation that did not boot is no rollback's target.
		if b, _ := os.ReadFile(f.lab.Host("app-2").Path("/nix/var/nix-hive/generations/2")); !strings.HasPrefix(string(b), "failed "+v2["app-2"]) {
			t.Errorf("the host's record of generation 2: %q, want it failed", b)
		}
		if env := grubenv(); strings.Contains(env, "next_entry=") || !strings.Contains(env, "saved_entry=NixOS\n") {
			t.Errorf("grubenv after the rollback:\n%s\nwant the top entry (now %s) saved and no one-shot", env, v1["app-2"])
		}
		if !strings.Contains(f.lab.Host("app-2").LogTail(), v2["app-2"]+" fails to boot") {
			t.Errorf("the lab did not boot the failing system: %s", f.lab.Host("app-2").LogTail())
		}
		f.recorded(map[string]string{"app-2": "rolled-back"})
	})

	t.Run("no boot loader to fall back with", func(t *testing.T) {
		code, out, _ := deploy("app-3")
		if code == 0 {
			t.Fatal("app-3 without a boot loader: exit 0")
		}
		summaryHas(t, out, "app-3", "failed", "no boot fallback: neither systemd-boot", "nothing changed (--force reboots without the fallback)")
		if got := f.system("app-3"); got.active != v1["app-3"] || got.profile != v1["app-3"] {
			t.Errorf("app-3 changed: %+v", got)
		}
		if n := f.lab.Host("app-3").Boots(); n != 0 {
			t.Errorf("app-3 rebooted")
		}
		code, out, errOut := deploy("--force", "app-3")
		if code != 0 {
			t.Fatalf("--force: exit %d", code)
		}
		summaryHas(t, out, "app-3", " ok ")
		if !strings.Contains(errOut, "--force: rebooting without it") {
			t.Errorf("--force does not say it reboots without the fallback:\n%s", errOut)
		}
		if got := f.system("app-3"); got.active != v2["app-3"] || f.lab.Host("app-3").Boots() != 1 {
			t.Errorf("app-3 after --force: %+v, %d boots", got, f.lab.Host("app-3").Boots())
		}
	})

	t.Run("a boot that hangs, without a watchdog, is reported unconfirmed", func(t *testing.T) {
		f.variants(map[string]string{
			"app-1": `version = "3"; bootFails = "hang";`,
			"app-2": `version = "2"; bootFails = true;`,
			"app-3": `version = "2";`,
		})
		v3 := f.build()
		boots := f.lab.Host("app-1").Boots()
		code, out, errOut := f.run("deploy", "--no", "build", "--goal", "boot", "--reboot", "--reboot-timeout", "3s", "--connect-timeout", faultConnect, "app-1")
		if code != 1 {
			t.Fatalf("exit %d, want 1", code)
		}
		summaryHas(t, out, "app-1", "rolled-back", "rolled back (boot), unconfirmed: "+v3["app-1"]+" did not come up within 3s")
		if !strings.Contains(errOut, "waiting up to 3s more for its next boot (a watchdog's or a power cycle's), which starts "+v2["app-1"]) {
			t.Errorf("the deploy did not wait for the fallback boot:\n%s", errOut)
		}
		if !strings.Contains(f.lab.Host("app-1").LogTail(), v3["app-1"]+" hangs at boot") {
			t.Errorf("the lab did not boot the hanging system: %s", f.lab.Host("app-1").LogTail())
		}
		// The operator's power cycle: the one-shot is spent, the default
		// is the system that ran before.
		if err := f.lab.Host("app-1").PowerCycle(); err != nil {
			t.Fatal(err)
		}
		waitUntil(t, "app-1 back from its power cycle", func() bool { return f.lab.Host("app-1").Boots() == boots+2 })
		if got := f.system("app-1"); got.active != v2["app-1"] {
			t.Errorf("after the power cycle app-1 runs %s, want %s", got.active, v2["app-1"])
		}
		if d, o := efi("LoaderEntryDefault"), efi("LoaderEntryOneShot"); d != "nixos-generation-2.conf" || o != "" {
			t.Errorf("EFI variables: default %q, one-shot %q; want nixos-generation-2.conf and none", d, o)
		}
		// Never seen booted: not recorded good, so no rollback takes it.
		if l := f.lastActivation("app-1"); !strings.HasSuffix(l, " boot "+v3["app-1"]+" activated") {
			t.Errorf("app-1's record of the activation: %q, want it not yet good", l)
		}
	})

	t.Run("Ctrl-C cuts the wait for a boot short", func(t *testing.T) {
		f.variants(map[string]string{
			"app-1": `version = "4"; bootFails = "hang";`,
			"app-2": `version = "2"; bootFails = true;`,
			"app-3": `version = "2";`,
		})
		v4 := f.build()
		boots := f.lab.Host("app-1").Boots()
		r := f.startProcess("deploy", "--no", "build", "--goal", "boot", "--reboot", "--reboot-timeout", "10m", "--connect-timeout", faultConnect, "app-1")
		r.stderr.waitFor(t, `app-1 \[wave 1\] reboot info: systemd-boot: the next boot starts nixos-generation-4\.conf once`, r.done)
		// Interrupted only once the host is down in its hung boot.
		waitUntil(t, "app-1 hung in its new system's boot", func() bool {
			return f.lab.Host("app-1").Boots() == boots+1 && strings.Contains(f.lab.Host("app-1").LogTail(), v4["app-1"]+" hangs at boot")
		})
		r.signal(syscall.SIGINT)
		if code := r.wait(); code == 0 {
			t.Fatal("interrupted: exit 0")
		}
		summaryHas(t, r.stdout.String(), "app-1", "unknown", "reboot")
		if err := f.lab.Host("app-1").PowerCycle(); err != nil {
			t.Fatal(err)
		}
		waitUntil(t, "app-1 back from its power cycle", func() bool { return f.lab.Host("app-1").Boots() == boots+2 })
		if got := f.system("app-1"); got.active != v2["app-1"] {
			t.Errorf("after the power cycle app-1 runs %s, want the default %s", got.active, v2["app-1"])
		}
	})
}
