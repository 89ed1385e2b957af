# Entry point for non-flake hives: `nix eval -f eval.nix --argstr hiveFile
# /abs/hive.nix inventory`. Taking the file as a string argument keeps any
# path, however odd its characters, out of generated Nix code.
{ hiveFile }:
(import ./hive.nix).fromFile (/. + hiveFile)
