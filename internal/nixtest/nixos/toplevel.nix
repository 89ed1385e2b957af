# What the tests' NixOS stand-in builds: /etc files (nix.conf rendered from
# nix.settings as NixOS renders it, sshd_config's extra part, the units
# declared) in a test system that a lab host can switch to.
{ config, lib, ... }:
let
  inherit (lib) mkOption types concatStringsSep mapAttrsToList isList isBool;
  system = config.nixpkgs.system;
  value = v: if isBool v then lib.boolToString v else if v == null then "" else toString v;
  nixConf = concatStringsSep "\n" (mapAttrsToList
    (k: v: "${k} = ${if isList v then concatStringsSep " " (map value v) else value v}")
    config.nix.settings) + "\n";
  pkgs = {
    writeShellScript = name: text: derivation {
      inherit name text system;
      builder = "/bin/sh";
      args = [ "-c" ''printf '#!/bin/sh\n%s' "$text" > "$out"; /bin/chmod +x "$out"'' ];
    };
    inotify-tools = "/run/current-system/sw";
    writeScriptBin = name: text: derivation {
      inherit name text system;
      builder = "/bin/sh";
      args = [ "-c" ''/bin/mkdir -p "$out/bin" && printf '%s' "$text" > "$out/bin/${name}" && /bin/chmod +x "$out/bin/${name}"'' ];
    };
  };
in
{
  options = {
    networking.hostName = mkOption { type = types.str; default = "nixos"; };
    environment.etc = mkOption {
      type = types.attrsOf (types.submodule { options.text = mkOption { type = types.lines; }; });
      default = { };
    };
    # Passed to examples/testsystems (version, sshd, broken ...).
    testSystem = mkOption { type = types.attrsOf types.anything; default = { }; };
    system.build.toplevel = mkOption { type = types.package; readOnly = true; };
  };

  config = {
    _module.args.pkgs = pkgs;
    environment.etc."nix/nix.conf".text = nixConf;
    environment.etc."ssh/sshd_config.extra".text = config.services.openssh.extraConfig;
    environment.etc."nix-hive-test/units".text = concatStringsSep "\n"
      (map (n: "${n}.service") (builtins.attrNames config.systemd.services)
        ++ map (n: "${n}.path") (builtins.attrNames config.systemd.paths));
    system.build.toplevel = import ../testsystems.nix ({
      name = config.networking.hostName;
      inherit system;
      etc = lib.mapAttrs (_: f: f.text) config.environment.etc;
    } // config.testSystem);
  };
}
