# nix-hive.lib.mkDevShell: a development shell for a hive's repository,
# with nix-hive on PATH and the hive preselected. NIX_HIVE_CONFIG (the
# default of nix-hive's -c/--config) is set when the shell starts, to the
# hive in the working tree it was entered from: the flake's own copy in the
# store would do for reading the hive, but hive.state and .nix-hive/ must
# be written beside the hive the user edits.
#
# flake.nix imports this file with nix-hive's nixpkgs, the default pkgs.
{ nixpkgs ? null }:

{
  # The hive: the repository's flake (self) or a path in it (./. or
  # ./deploy or ./deploy/hive.nix), or where it is relative to the flake
  # as a string ("deploy").
  hive
, # Without pkgs, nix-hive's own nixpkgs for system (which pure flake
  # evaluation does not know: pass pkgs or system there).
  system ? builtins.currentSystem
, pkgs ? (if nixpkgs == null then throw "mkDevShell: pass pkgs" else nixpkgs.legacyPackages.${system})
, # nix-hive, by default built from this source with pkgs.
  package ? pkgs.callPackage ../package.nix { }
, # More tools for the shell.
  packages ? [ ]
, # Runs after NIX_HIVE_CONFIG is set.
  shellHook ? ""
, # Anything else is for pkgs.mkShell.
  ...
}@args:

let
  inherit (pkgs) lib;
  where = toString (if builtins.isAttrs hive then hive.outPath else hive);
  # In a flake, self and its paths are copies in the store
  # (/nix/store/<hash>-source/deploy): what matters is the place below the
  # copy's root, which is the flake's directory in the working tree.
  inStore = builtins.match "${lib.escapeRegex builtins.storeDir}/[^/]+(/(.*))?" where;
  rel =
    if inStore != null then (if builtins.elemAt inStore 1 == null then "" else builtins.elemAt inStore 1)
    else if lib.hasPrefix "/" where then null
    else if where == "." then ""
    else lib.removePrefix "./" where;

  # The working tree is found up from $PWD: the nearest directory with a
  # flake.nix (where `nix develop` found the flake) that holds the hive.
  find = ''
    nix_hive_dir=$PWD
    while [ ! -e "$nix_hive_dir/flake.nix" ] || [ ! -e "$nix_hive_dir/"${lib.escapeShellArg rel} ]; do
      if [ -z "$nix_hive_dir" ] || [ "$nix_hive_dir" = / ]; then
        nix_hive_dir=
        break
      fi
      nix_hive_dir=''${nix_hive_dir%/*}
      nix_hive_dir=''${nix_hive_dir:-/}
    done
    if [ -n "$nix_hive_dir" ]; then
      export NIX_HIVE_CONFIG=${if rel == "" then ''"$nix_hive_dir"'' else ''"''${nix_hive_dir%/}/"${lib.escapeShellArg rel}''}
    else
      export NIX_HIVE_CONFIG=${if inStore != null then lib.escapeShellArg where else ''"$PWD/"${lib.escapeShellArg rel}''}
      echo "nix-hive: no working tree of the hive at or above $PWD; NIX_HIVE_CONFIG=$NIX_HIVE_CONFIG" >&2
    fi
    unset nix_hive_dir
  '';
in
pkgs.mkShell (removeAttrs args [ "hive" "system" "pkgs" "package" "packages" "shellHook" ] // {
  packages = [ package ] ++ packages;
  shellHook = (if rel == null then "export NIX_HIVE_CONFIG=${lib.escapeShellArg where}\n" else find) + shellHook;
})
