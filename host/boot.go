package host

import (
	"context"
	"fmt"
	"strings"

	"github.com/nix-hive/nix-hive/eval"
)

// The boot fallback of a deploy with --goal boot --reboot: before the
// reboot, the new system becomes the boot loader's entry for the next
// boot only, and the system that booted last stays the default. A new
// system that never comes up (a kernel, initrd or early boot that breaks
// before sshd) is left by the host's next boot, a watchdog's or a power
// cycle's; one that comes up and answers becomes the default.
//
// systemd-boot: `bootctl set-oneshot` and `bootctl set-default` (EFI
// variables; an empty ID removes the default's, so that loader.conf,
// which NixOS writes, decides again). GRUB: `grub-reboot` and
// `grub-set-default`, which need grub.cfg to boot the saved entry
// (GRUB_DEFAULT=saved; boot.loader.grub.default = "saved" on NixOS).
// An entry is found by the system it boots (its `init=SYSTEM/init`), not
// by its title, whose wording differs between releases.

// bootProgram detect | prepare NEW OLD | default SYSTEM, as root:
//   - detect prints the boot loader, or "none: WHY" and exits 3;
//   - prepare makes NEW's entry the one-shot and OLD's the default, and
//     prints the loader and both entries, a line each;
//   - default makes SYSTEM's entry the default (for systemd-boot, by
//     removing the EFI variable when loader.conf already names it).
const bootProgram = `set -u
L= B= w=
if command -v bootctl >/dev/null 2>&1 && B=$(bootctl -x 2>/dev/null) && [ -d "$B/loader/entries" ]; then
L=systemd-boot
elif B=/boot/grub/grub.cfg && [ -r $B ]; then
L=grub
command -v grub-reboot >/dev/null && command -v grub-set-default >/dev/null || w="GRUB without grub-reboot and grub-set-default"
grep -q saved_entry $B || w="$B does not boot the saved entry (GRUB_DEFAULT=saved)"
else
w="neither systemd-boot (bootctl, loader entries) nor GRUB"
fi
[ -z "$w" ] || { echo "none: $w"; exit 3; }
entry() {
f=$B
[ $L = grub ] || f="$B/loader/entries/*.conf"
awk -v s="init=$1/init" -v L=$L '/^[ \t]*submenu /{split($0,q,"\"");m=q[2];next}/^[ \t]*menuentry /{split($0,q,"\"");t=m==""?q[2]:m">"q[2];next}/^}/{m=""}{for(i=1;i<=NF;i++)if($i==s){if(L!="grub"){t=FILENAME;sub(/.*\//,"",t)}print t;exit}}' $f | grep . || { echo "$L has no boot entry for $1" >&2; return 1; }
}
default() {
if [ $L = grub ]; then grub-set-default "$1"; return; fi
[ "$(sed -n 's/^default[ \t]*//p' "$B/loader/loader.conf" 2>/dev/null)" = "$1" ] && bootctl set-default "" 2>/dev/null || bootctl set-default "$1"
}
case ${1-} in
detect) echo $L ;;
prepare)
new=$(entry "$2") && old=$(entry "$3") || exit 1
default "$old" || exit 1
if [ $L = grub ]; then grub-reboot "$new"; else bootctl set-oneshot "$new"; fi || exit 1
printf '%s\n%s\n%s\n' $L "$new" "$old" ;;
default) e=$(entry "$2") && default "$e" && echo "$e" ;;
*) exit 64 ;;
esac
`

// BootLoader is the boot loader of a host and the entries a boot
// fallback set there.
type BootLoader struct {
	Name string // "systemd-boot" or "grub"
	// Next is the entry the next boot starts (the new system), Default
	// the one every boot after it starts (the system that booted last).
	Next, Default string
}

// NoBootLoader is a host whose boot loader cannot boot an entry once:
// a failed boot would not fall back.
type NoBootLoader struct{ Why string }

func (e *NoBootLoader) Error() string {
	return "no boot fallback: " + e.Why
}

// DetectBootLoader says which boot loader host in has, or why it has
// none nix-hive can fall back with (a *NoBootLoader).
func DetectBootLoader(ctx context.Context, remote Remote, in *eval.Instance, priv *Privilege) (string, error) {
	lines, err := runBoot(ctx, remote, in, priv, "detect")
	if err != nil {
		return "", err
	}
	return lines[0], nil
}

// PrepareBootFallback makes system next the entry host in boots once and
// keeps fallback the default.
func PrepareBootFallback(ctx context.Context, remote Remote, in *eval.Instance, priv *Privilege, next, fallback string) (BootLoader, error) {
	lines, err := runBoot(ctx, remote, in, priv, "prepare", next, fallback)
	if err != nil {
		return BootLoader{}, err
	}
	if len(lines) != 3 {
		return BootLoader{}, fmt.Errorf("boot fallback: unexpected answer %q", strings.Join(lines, " | "))
	}
	return BootLoader{Name: lines[0], Next: lines[1], Default: lines[2]}, nil
}

// SetBootDefault makes system's entry the boot loader's default on host
// in, and returns the entry.
func SetBootDefault(ctx context.Context, remote Remote, in *eval.Instance, priv *Privilege, system string) (string, error) {
	lines, err := runBoot(ctx, remote, in, priv, "default", system)
	if err != nil {
		return "", err
	}
	return lines[len(lines)-1], nil
}

func runBoot(ctx context.Context, remote Remote, in *eval.Instance, priv *Privilege, args ...string) ([]string, error) {
	var out, errOut lockedBuffer
	code, err := remote.Run(ctx, in.Name, asRoot(in, priv, bootProgram, args...), nil, &out, &errOut)
	if err != nil {
		return nil, fmt.Errorf("boot loader %s: %w", args[0], err)
	}
	text := strings.TrimSpace(out.String())
	if why, ok := strings.CutPrefix(text, "none: "); ok && code == 3 {
		return nil, &NoBootLoader{Why: why}
	}
	if code != 0 {
		return nil, fmt.Errorf("boot loader %s: exit %d: %s", args[0], code, lastLines(errOut.String()+"\n"+text, 3))
	}
	if text == "" {
		return nil, fmt.Errorf("boot loader %s: no answer", args[0])
	}
	return strings.Split(text, "\n"), nil
}
