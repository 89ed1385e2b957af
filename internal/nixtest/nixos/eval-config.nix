# A miniature nixos/lib/eval-config.nix for tests: the real module system
# (nixpkgs' lib.evalModules, unpacked beside this file as ../../lib) with
# declarations of the NixOS options nix-hive's module and test systems
# touch, typed as NixOS types them. Its toplevel is a test system (see
# examples/testsystems) that carries the configuration's /etc files, so a
# lab host that switches to it shows what the modules decided.
{ system ? builtins.currentSystem, modules, specialArgs ? { }, ... }:
let
  lib = import ../../lib;
in
lib.evalModules {
  modules = [ ../modules/options.nix ../modules/toplevel.nix { nixpkgs.system = system; } ] ++ modules;
  specialArgs = { modulesPath = toString ../modules; } // specialArgs;
}
