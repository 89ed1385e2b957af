# Declarations of the NixOS options the tests' modules set, with the types
# NixOS gives them (nixos/modules/config/nix.nix, services/misc/nix-ssh-serve.nix,
# system/boot/systemd.nix, system/boot/loader/grub/grub.nix, config/users-groups.nix, config/system-path.nix,
# security/sudo.nix), and what
# nix-ssh-serve.nix does with its options: enough for the real module
# system to merge, check and reject values as NixOS would.
{ config, lib, ... }:
let
  inherit (lib) mkOption mkIf mkAfter types optionalString;
  semanticConfType =
    let
      confAtom = types.nullOr (types.oneOf [ types.bool types.int types.float types.str types.path types.package ])
        // { description = "Nix config atom (null, bool, int, float, str, path or package)"; };
    in
    types.attrsOf (types.either confAtom (types.listOf confAtom));
  unit = types.submodule { freeformType = types.attrsOf types.anything; };
  sshServe = config.nix.sshServe;
in
{
  options = {
    nixpkgs.system = mkOption { type = types.str; };
    nix.settings = mkOption {
      type = types.submodule {
        freeformType = semanticConfType;
        options = {
          substituters = mkOption { type = types.listOf types.str; };
          trusted-public-keys = mkOption { type = types.listOf types.str; };
          require-sigs = mkOption { type = types.bool; default = true; };
          trusted-users = mkOption { type = types.listOf types.str; default = [ "root" ]; };
        };
      };
      default = { };
    };
    nix.sshServe = {
      enable = mkOption { type = types.bool; default = false; };
      write = mkOption { type = types.bool; default = false; };
      trusted = mkOption { type = types.bool; default = false; };
      keys = mkOption { type = types.listOf types.str; default = [ ]; };
      protocol = mkOption { type = types.enum [ "ssh" "ssh-ng" ]; default = "ssh"; };
    };
    systemd.services = mkOption { type = types.attrsOf unit; default = { }; };
    systemd.paths = mkOption { type = types.attrsOf unit; default = { }; };
    systemd.tmpfiles.rules = mkOption { type = types.listOf types.str; default = [ ]; };
    users.users = mkOption { type = types.attrsOf (types.submodule { freeformType = types.attrsOf types.anything; }); default = { }; };
    users.groups = mkOption { type = types.attrsOf (types.submodule { freeformType = types.attrsOf types.anything; }); default = { }; };
    environment.systemPackages = mkOption { type = types.listOf types.package; default = [ ]; };
    security.sudo.extraRules = mkOption {
      type = types.listOf (types.submodule {
        options = {
          users = mkOption { type = types.listOf (types.either types.str types.int); default = [ ]; };
          groups = mkOption { type = types.listOf (types.either types.str types.int); default = [ ]; };
          host = mkOption { type = types.str; default = "ALL"; };
          runAs = mkOption { type = types.str; default = "ALL:ALL"; };
          commands = mkOption {
            type = types.listOf (types.either types.str (types.submodule {
              options = {
                command = mkOption { type = types.str; };
                options = mkOption {
                  type = types.listOf (types.enum [ "NOPASSWD" "PASSWD" "NOEXEC" "EXEC" "SETENV" "NOSETENV" "LOG_INPUT" "NOLOG_INPUT" "LOG_OUTPUT" "NOLOG_OUTPUT" "MAIL" "NOMAIL" "FOLLOW" "NOFOLLOW" "INTERCEPT" "NOINTERCEPT" ]);
                  default = [ ];
                };
              };
            }));
          };
        };
      });
      default = [ ];
    };
    systemd.watchdog.runtimeTime = mkOption { type = types.nullOr types.str; default = null; };
    boot.loader.grub.default = mkOption { type = types.either types.int types.str; default = 0; };
    services.openssh.enable = mkOption { type = types.bool; default = false; };
    services.openssh.extraConfig = mkOption { type = types.lines; default = ""; };
  };

  config = {
    # As NixOS: cache.nixos.org comes after whatever else is configured.
    nix.settings.substituters = mkAfter [ "https://cache.nixos.org/" ];
    nix.settings.trusted-public-keys = [ "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=" ];

    users.users.nix-ssh = mkIf sshServe.enable {
      isSystemUser = true;
      group = "nix-ssh";
      openssh.authorizedKeys.keys = sshServe.keys;
    };
    users.groups.nix-ssh = mkIf sshServe.enable { };
    nix.settings.trusted-users = mkIf (sshServe.enable && sshServe.trusted) [ "nix-ssh" ];
    services.openssh.enable = mkIf sshServe.enable true;
    services.openssh.extraConfig = mkIf sshServe.enable ''
      Match User nix-ssh
        AllowAgentForwarding no
        AllowTcpForwarding no
        PermitTTY no
        PermitTunnel no
        X11Forwarding no
        ForceCommand ${if sshServe.protocol == "ssh" then "nix-store --serve${optionalString sshServe.write " --write"}" else "nix-daemon --stdio"}
      Match All
    '';
  };
}
