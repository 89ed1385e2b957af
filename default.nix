# nix-hive without flakes: `nix-env -if <tarball or checkout>` installs
# it, `nix-build` builds it, with the <nixpkgs> of the caller (or the pkgs
# passed with --arg). The package itself is package.nix, shared with the
# flake.
{ pkgs ? import <nixpkgs> { }
, # The commit built from, for `nix-hive --version`. git archive, and so
  # GitHub's tarballs, writes it into the string below (.gitattributes:
  # export-subst); a checkout leaves it unknown unless given:
  # nix-build --argstr revision "$(git rev-parse HEAD)".
  revision ? let commit = "$Format:%H$"; in
    if builtins.match "[0-9a-f]{40}|[0-9a-f]{64}" commit != null then commit else null
}:

pkgs.callPackage ./package.nix { inherit revision; }
