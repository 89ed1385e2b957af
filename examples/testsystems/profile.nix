# A stand-in for a profile beside the system one, such as a user's
# home-manager generation (whose package has an `activate` at its top),
# that builds without nixpkgs. Its activate records, in its user's home,
# which generation it activated, as whom, and for which profile:
#
#   $HOME/.nix-hive-test/NAME: "VERSION USER PROFILE"
#
#   version = "..."   a different generation of the same profile
#   fails = true      activate exits 3 (a home-manager activation that fails)
{ name ? "home"
, version ? "1"
, fails ? false
, system ? "x86_64-linux"
}:
derivation {
  inherit system version;
  name = "${name}-profile-${version}";
  profileName = name;
  builder = "/bin/sh";
  PATH = "/usr/bin:/bin";
  fails = if fails then "1" else "";
  args = [ "-c" ''
    set -e
    mkdir -p "$out"
    echo "$version" > "$out/version"
    cat > "$out/activate" <<EOS
    #!/bin/sh
    # test stand-in for home-manager's activate
    set -e
    if [ -n "$fails" ]; then echo "activation of $profileName $version fails on purpose" >&2; exit 3; fi
    mkdir -p "\$HOME/.nix-hive-test"
    echo "$version \$(id -un) \$PROFILE" > "\$HOME/.nix-hive-test/$profileName"
    echo "activated $profileName ($version) as \$(id -un)"
    EOS
    chmod +x "$out/activate"
  '' ];
}
