# Stand-ins for NixOS systems that build without nixpkgs (nothing outside
# this machine is reachable in the lab). Each is a closure with
# bin/switch-to-configuration, like a real NixOS toplevel: it records the
# goal it was activated with (and which keys /run/keys held then) and, for
# switch/test, points /run/current-system at itself, which is what nix-hive
# checks after activation. On a lab host
# (which has lab-service) switch/test also do what switching a NixOS
# configuration does to sshd and the firewall, and switch/boot install the
# host's emulated boot loader (lab-bootloader) where it has one.
#
#   broken = true          switch-to-configuration exits 1
#   failOn = [ "switch" ]  it exits 1 for these goals only (a unit that fails
#                          to start on switch; the boot entry is fine)
#   sleep = N              activation takes N seconds
#   gate = true            activation waits until /run/nix-hive-test/gate exists
#                          (a test opens it once it has done its mischief)
#   sshd = "off"           the system stops sshd (a configuration that breaks SSH)
#   firewall = "block-ssh" the system's firewall drops SSH to the host
#   payloadMiB = N         the closure carries N MiB (to make transfers visible)
#   version = "..."        a different system with the same name
#   packages = [ { name = "blob"; version = "1.0"; sizeKiB = 1024; } ]
#                          packages the system references from sw/, each a
#                          store path of its own (name-version), as a NixOS
#                          system path does: what plan's closure diffs show
#   specialisations = { gpu = { etc."gpu" = "on"; }; }
#                          specialisation/<name> of the system, each a test
#                          system of its own with these arguments changed
#                          (its version is "<version>-<name>")
#   bootFails = true       the system fails to boot on a lab host with an
#                          emulated boot loader: its sshd never starts, and
#                          the lab's watchdog reboots the host; "hang": no
#                          watchdog fires, the host waits for a power cycle
#   etc = { "nix/nix.conf" = "..."; }
#                          files of the system's etc/ (what a configuration
#                          decided, for tests of modules systems)
let mk =
{ name
, version ? "1"
, broken ? false
, failOn ? [ ]
, sleep ? 0
, gate ? false
, sshd ? "on"
, firewall ? "open"
, payloadMiB ? 0
, system ? "x86_64-linux"
, etc ? { }
, packages ? [ ]
, bootFails ? false
, specialisations ? { }
}:
assert builtins.elem sshd [ "on" "off" ];
assert builtins.elem firewall [ "open" "block-ssh" ];
let
  package = p: derivation {
    inherit system;
    name = "${p.name}-${p.version}";
    builder = "/bin/sh";
    PATH = "/usr/bin:/bin";
    sizeKiB = toString (p.sizeKiB or 1);
    args = [ "-c" "head -c $((sizeKiB * 1024)) /dev/zero > $out" ];
  };
  etcTexts = builtins.listToAttrs (builtins.genList
    (i: { name = "etc_${toString i}"; value = etc.${builtins.elemAt (builtins.attrNames etc) i}; })
    (builtins.length (builtins.attrNames etc)));
  # Each a system of its own, as NixOS's specialisation.<name>: the same
  # arguments but for what the specialisation says.
  specs = builtins.mapAttrs (sn: sa: mk ({ inherit name system sshd firewall; version = "${version}-${sn}"; } // sa)) specialisations;
in
derivation (etcTexts // (if specialisations == { } then { } else {
  specNames = builtins.attrNames specs;
  specPaths = map (n: specs.${n}) (builtins.attrNames specs);
}) // {
  inherit system version firewall;
  name = "nixos-system-${name}-${version}";
  builder = "/bin/sh";
  PATH = "/usr/bin:/bin";
  hiveSystemName = name;
  failOn = if broken then "switch boot test dry-activate" else toString failOn;
  gate = if gate then "1" else "";
  sshdAction = if sshd == "on" then "start" else "stop";
  sleepSeconds = toString sleep;
  payloadMiB = toString payloadMiB;
  # etc file i (names without spaces) has its text in $etc_i
  etcNames = builtins.attrNames etc;
  packages = map package packages;
  args = [ "-c" (''
    set -e
    mkdir -p "$out/bin"
    echo "$hiveSystemName" > "$out/name"
    echo "$version" > "$out/nixos-version"
    mkdir -p "$out/sw"
    for p in $packages; do ln -s "$p" "$out/sw/"; done
    i=0
    for n in $etcNames; do
      mkdir -p "$(dirname "$out/etc/$n")"
      eval "printf '%s' \"\$etc_$i\"" > "$out/etc/$n"
      i=$((i + 1))
    done
    if [ "$payloadMiB" -gt 0 ]; then
      head -c "$((payloadMiB * 1048576))" /dev/urandom > "$out/payload"
    fi
    cat > "$out/bin/switch-to-configuration" <<EOS
    #!/bin/sh
    # test stand-in for NixOS's switch-to-configuration
    goal="\$1"
    case "\$goal" in switch|boot|test|dry-activate) ;; *) echo "usage: \$0 switch|boot|test|dry-activate" >&2; exit 100;; esac
    mkdir -p /run/nix-hive-test
    echo "\$(date +%s.%N) $out \$goal" >> /run/nix-hive-test/activations
    echo "$out \$goal:" \$(ls /run/keys 2>/dev/null) >> /run/nix-hive-test/keys-seen
    if [ -n "$gate" ]; then
      while [ ! -e /run/nix-hive-test/gate ]; do sleep 0.05; done
    fi
    if [ "$sleepSeconds" -gt 0 ]; then sleep "$sleepSeconds"; fi
    case " $failOn " in *" \$goal "*) echo "switch-to-configuration: $hiveSystemName fails \$goal on purpose" >&2; exit 1;; esac
    case "\$goal" in switch|boot)
      if command -v lab-bootloader >/dev/null 2>&1; then lab-bootloader install; fi ;;
    esac
    case "\$goal" in
      switch|test)
        ln -sfn "$out" /run/current-system.tmp && mv -T /run/current-system.tmp /run/current-system
        if command -v lab-service >/dev/null 2>&1; then
          lab-service firewall-$firewall
          lab-service sshd-$sshdAction
        fi
        ;;
    esac
    echo "activated $hiveSystemName ($version) with goal \$goal"
    EOS
    chmod +x "$out/bin/switch-to-configuration"
  '' + (if bootFails != false then ''
    touch "$out/lab-boot-fails"
  '' else "") + (if bootFails == "hang" then ''
    touch "$out/lab-boot-hangs"
  '' else "") + (if specialisations == { } then "" else ''
    mkdir "$out/specialisation"
    set -- $specPaths
    for n in $specNames; do ln -s "$1" "$out/specialisation/$n"; shift; done
  '')) ];
});
in mk
