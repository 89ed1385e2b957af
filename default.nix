# nix-hive without flakes: `nix-env -if <tarball or checkout>` installs
# it, `nix-build` builds it, with the <nixpkgs> of the caller (or the pkgs
# passed with --arg). The package itself is package.nix, shared with the
# flake.
{ pkgs ? import <nixpkgs> { } }:

pkgs.callPackage ./package.nix { }
