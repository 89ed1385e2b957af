package lab

import (
	"fmt"
	"strings"
)

// A lab host may have an emulated boot loader (Config.BootLoader): what
// a NixOS machine's systemd-boot or GRUB keeps in /boot and in EFI
// variables, kept in the host's own /boot, with stand-ins for the
// commands that change it, and a boot that follows it. nix-hive's boot
// fallback (deploy --goal boot --reboot) is tested against it: the
// one-shot entry it sets, the default it keeps, and a system that fails
// to boot, after which the emulated watchdog reboots the host into the
// default.
//
// What each file holds is what the real boot loader keeps, in the same
// place and shape where nix-hive reads it (loader entries with their
// `options init=SYSTEM/init` line, loader.conf's default, GRUB's
// grub.cfg with its submenu and grubenv), so nix-hive's programs work on
// the lab as on a real host. The EFI variables of systemd-boot live in
// /boot/.lab-efivars (a real host keeps them in the firmware).

// Boot loaders a lab host can emulate.
const (
	SystemdBoot = "systemd-boot"
	GRUB        = "grub"
)

// bootWatchdogSeconds is how long an emulated boot that fails (its
// system has lab-boot-fails) waits before the watchdog reboots the host,
// as a hardware watchdog (systemd.watchdog.runtimeTime) would; one that
// hangs (lab-boot-hangs too) waits for the lab's reboot (Host.PowerCycle),
// as a host without a watchdog waits for its operator.
const bootWatchdogSeconds = 2

// bootScripts are the host's boot-loader commands by name, for a host
// with loader ("" for none): the stand-ins for bootctl or GRUB's tools,
// lab-bootloader (what installing a NixOS system's boot loader does,
// run by the test systems' switch-to-configuration) and lab-boot (what
// the firmware and boot loader choose at boot, run by the host's init).
func bootScripts(loader string) map[string]string {
	switch loader {
	case SystemdBoot:
		return map[string]string{
			"bootctl":        bootctlScript,
			"lab-bootloader": fmt.Sprintf(labBootloaderScript, loader),
			"lab-boot":       fmt.Sprintf(labBootScript, loader),
		}
	case GRUB:
		return map[string]string{
			"grub-editenv":     grubEditenvScript,
			"grub-reboot":      grubSetScript("next_entry"),
			"grub-set-default": grubSetScript("saved_entry"),
			"lab-bootloader":   fmt.Sprintf(labBootloaderScript, loader),
			"lab-boot":         fmt.Sprintf(labBootScript, loader),
		}
	}
	return nil
}

func validBootLoader(loader string) bool { return loader == SystemdBoot || loader == GRUB }

// labBootloaderScript (%[1]s: the loader) writes an entry for every
// generation of the system profile and makes the profile's the default,
// as NixOS's boot loader installation does on switch and boot.
const labBootloaderScript = `#!/bin/sh
# lab-bootloader install: the lab's stand-in for installing a NixOS
# system's boot loader (%[1]s): an entry per system profile generation,
# the profile's generation the default.
set -e
[ "${1-}" = install ] || { echo "usage: lab-bootloader install" >&2; exit 2; }
p=/nix/var/nix/profiles
cur=$(readlink "$p/system")
cur=${cur#system-}
cur=${cur%%-link}
gens=$(for l in "$p"/system-*-link; do [ -e "$l" ] || continue; g=${l##*/system-}; echo "${g%%-link}"; done | sort -rn)
case %[1]s in
systemd-boot)
  mkdir -p /boot/loader/entries
  rm -f /boot/loader/entries/nixos-generation-*.conf
  for g in $gens; do
    printf 'title NixOS\nversion Generation %%s\nlinux /EFI/nixos/kernel.efi\noptions init=%%s/init loglevel=4\n' "$g" "$(readlink -f "$p/system-$g-link")" >"/boot/loader/entries/nixos-generation-$g.conf"
  done
  printf 'timeout 5\ndefault nixos-generation-%%s.conf\n' "$cur" >/boot/loader/loader.conf.tmp
  mv /boot/loader/loader.conf.tmp /boot/loader/loader.conf ;;
grub)
  mkdir -p /boot/grub
  {
    echo 'if [ -s $prefix/grubenv ]; then load_env; fi'
    echo 'if [ "${next_entry}" ]; then set default="${next_entry}"; set next_entry=; save_env next_entry; else set default="${saved_entry}"; fi'
    printf 'menuentry "NixOS" --class nixos {\n  linux /boot/kernel init=%%s/init loglevel=4\n}\n' "$(readlink -f "$p/system")"
    echo 'submenu "NixOS - All configurations" {'
    for g in $gens; do
      printf '  menuentry "NixOS - Configuration %%s (lab)" --class nixos {\n    linux /boot/kernel init=%%s/init loglevel=4\n  }\n' "$g" "$(readlink -f "$p/system-$g-link")"
    done
    echo '}'
  } >/boot/grub/grub.cfg.tmp
  mv /boot/grub/grub.cfg.tmp /boot/grub/grub.cfg
  [ -e /boot/grub/grubenv ] || printf '# GRUB Environment Block\n' >/boot/grub/grubenv ;;
esac
`

// labBootScript (%[1]s: the loader) prints the system the host boots,
// consuming the one-shot entry as the boot loader does; nothing when no
// entry resolves (the init then boots the system profile).
const labBootScript = `#!/bin/sh
# lab-boot: what the lab's %[1]s boots: the one-shot entry (once), else the
# default.
case %[1]s in
systemd-boot)
  v=/boot/.lab-efivars
  id=
  if [ -s $v/LoaderEntryOneShot ]; then
    read -r id <$v/LoaderEntryOneShot
    rm -f $v/LoaderEntryOneShot
  elif [ -s $v/LoaderEntryDefault ]; then
    read -r id <$v/LoaderEntryDefault
  elif [ -r /boot/loader/loader.conf ]; then
    id=$(sed -n 's/^default  *//p' /boot/loader/loader.conf)
  fi
  [ -n "$id" ] && [ -r "/boot/loader/entries/$id" ] || exit 0
  sed -n 's/^options .*init=\([^ ]*\)\/init.*/\1/p' "/boot/loader/entries/$id" ;;
grub)
  e=/boot/grub/grubenv
  [ -r /boot/grub/grub.cfg ] || exit 0
  want=$(sed -n 's/^next_entry=//p' $e 2>/dev/null)
  if [ -n "$want" ]; then
    grub-editenv $e unset next_entry
  else
    want=$(sed -n 's/^saved_entry=//p' $e 2>/dev/null)
  fi
  awk -v want="$want" '
    /^[ \t]*submenu / { split($0, q, "\""); sub_ = q[2]; next }
    /^[ \t]*menuentry / { split($0, q, "\""); title = (sub_ == "" ? q[2] : sub_ ">" q[2]); n++; next }
    /^}/ { sub_ = "" }
    / init=/ && title != "" && (want == title || (want == "" && n == 1)) {
      for (i = 1; i <= NF; i++) if ($i ~ /^init=/) { s = substr($i, 6); sub(/\/init$/, "", s); print s; exit }
    }' /boot/grub/grub.cfg ;;
esac
`

// bootctlScript is the lab's bootctl: the boot path, and the default and
// one-shot entries (EFI variables on a real host, here files in /boot).
// An empty ID removes the variable, as systemd's bootctl does.
const bootctlScript = `#!/bin/sh
# bootctl: the lab's stand-in for systemd's, on emulated EFI variables.
v=/boot/.lab-efivars
case "${1-}" in
-x|--print-boot-path|-p|--print-esp-path) echo /boot ;;
is-installed) [ -r /boot/loader/loader.conf ] ;;
set-default|set-oneshot)
  [ $# = 2 ] || { echo "bootctl: $1 takes one entry ID" >&2; exit 1; }
  case $1 in set-default) n=LoaderEntryDefault ;; *) n=LoaderEntryOneShot ;; esac
  mkdir -p $v
  if [ -z "$2" ]; then rm -f "$v/$n"; exit 0; fi
  printf '%s\n' "$2" >"$v/$n.tmp" && mv "$v/$n.tmp" "$v/$n" ;;
list)
  for f in /boot/loader/entries/*.conf; do [ -e "$f" ] && echo "${f##*/}"; done ;;
*) echo "bootctl (lab): ${1-} is not emulated" >&2; exit 1 ;;
esac
`

// grubEditenvScript is the lab's grub-editenv FILE list|set K=V|unset K.
const grubEditenvScript = `#!/bin/sh
# grub-editenv: the lab's stand-in for GRUB's, on a plain grubenv.
set -e
f=$1 op=$2
shift 2
[ -e "$f" ] || printf '# GRUB Environment Block\n' >"$f"
case $op in
list) grep -v '^#' "$f" || : ;;
set|unset)
  t=$f.tmp
  cp "$f" "$t"
  for kv in "$@"; do
    k=${kv%%=*}
    grep -v "^$k=" "$t" >"$t.1" || :
    mv "$t.1" "$t"
    [ $op = unset ] || printf '%s\n' "$kv" >>"$t"
  done
  mv "$t" "$f" ;;
*) echo "grub-editenv (lab): $op is not emulated" >&2; exit 1 ;;
esac
`

// grubSetScript is grub-reboot (next_entry) or grub-set-default
// (saved_entry): ENTRY, a title path ("Submenu>Entry") or a number.
func grubSetScript(variable string) string {
	return strings.ReplaceAll(`#!/bin/sh
# The lab's stand-in for GRUB's: sets VAR in /boot/grub/grubenv.
[ $# = 1 ] || { echo "usage: $0 ENTRY" >&2; exit 1; }
exec grub-editenv /boot/grub/grubenv set "VAR=$1"
`, "VAR", variable)
}

// bootInit is the part of the host's init that boots through the
// emulated boot loader: a /run emptied by a reboot gets the system
// lab-boot chooses, and a system that fails to boot leaves the host
// without sshd until the watchdog reboots it.
func bootInit() string {
	return fmt.Sprintf(`if [ ! -e /run/current-system ]; then
  s=$(lab-boot) || s=
  if [ -n "$s" ] && [ -e "$s" ]; then
    ln -s "$s" /run/current-system
    ln -s "$s" /run/booted-system
  fi
fi
if [ -e /run/current-system/lab-boot-fails ]; then
  w=%[1]d
  if [ -e /run/current-system/lab-boot-hangs ]; then
    echo "lab: $(readlink /run/current-system) hangs at boot (no sshd), and no watchdog resets the host"
    w=86400
  else
    echo "lab: $(readlink /run/current-system) fails to boot (no sshd); the watchdog reboots the host in $w s"
  fi
  trap 'exit 129' HUP
  : >%[2]s
  sleep $w &
  wait $! || :
  exit 129
fi
`, bootWatchdogSeconds, bootFailedMark)
}

// bootFailedMark is the file in /run of a host whose boot failed: it is
// up (Host.Start returns), without sshd.
const bootFailedMark = "/run/lab-boot-failed"
