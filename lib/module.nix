# NixOS module for hosts managed by nix-hive (flake: nixosModules.default).
#
# A consumer instance realises its system from its store instance, and only
# accepts paths signed by the hive key; a store instance serves its Nix store
# over SSH to its consumers. nix-hive passes the same settings on the command
# line when it substitutes, so this module is what makes them permanent (and
# what lets a host substitute by itself, e.g. during `nixos-rebuild`).
#
# Keys (secrets) nix-hive uploads live in /run/keys (root:keys 0750, as
# NixOS has it, restored at every boot and switch): only root and the
# members of keys enter it. So the users who may read a key in /run/keys
# named in nix-hive.keys (its owner, and the users of its group, when its
# mode lets them read it) are made members of keys. Each key named in
# nix-hive.keys gets a <name>-key.service that is active while the key's
# file exists, so services can order themselves after it
# (wants/after = [ "db-password-key.service" ]).
#
# A host whose hive login is not root (instances.<name>.user) sets
# nix-hive.sudo.user to it: the module installs nix-hive-agent (./agent.sh,
# what nix-hive runs as root there, one fixed operation per call) and a sudo
# rule that allows the login that file and nothing else.
{ config, lib, pkgs, ... }:
let
  cfg = config.nix-hive;
  inherit (lib) mkOption mkEnableOption mkIf types optional mapAttrs' nameValuePair;

  keyModule = { name, ... }: {
    options = {
      dest = mkOption { type = types.str; default = "/run/keys/${name}"; description = "Where the key's file is."; };
      user = mkOption { type = types.str; default = "root"; description = "The key file's owner."; };
      group = mkOption { type = types.str; default = "root"; description = "The key file's group."; };
      mode = mkOption { type = types.strMatching "0?[0-7]{3}"; default = "0400"; description = "The key file's mode (octal)."; };
      upload = mkOption { type = types.enum [ "pre-activation" "post-activation" ]; default = "pre-activation"; description = "When nix-hive uploads it."; };
    };
  };

  # Active while the file exists: the key is replaced by a rename (the old
  # inode goes, a new one is there) or removed (the unit stops).
  keyService = name: k: nameValuePair "${name}-key" {
    description = "nix-hive key ${name} (${k.dest})";
    unitConfig.ConditionPathExists = k.dest;
    serviceConfig = {
      Type = "simple";
      ExecStart = pkgs.writeShellScript "${name}-key" ''
        while [ -e ${lib.escapeShellArg k.dest} ]; do
          ${pkgs.inotify-tools}/bin/inotifywait -qq -e delete_self -e move_self ${lib.escapeShellArg k.dest} || sleep 1
        done
      '';
    };
  };
  # The agent of the nix-hive this module comes with: nix-hive uses a
  # host's agent only when it is its own version.
  agent = pkgs.writeScriptBin "nix-hive-agent" (builtins.readFile ./agent.sh);

  # Whether mode (an octal string, "0440") lets its digit at pos (0 the
  # owner's, 1 the group's) read.
  reads = mode: pos: lib.toInt (builtins.substring (builtins.stringLength mode - 3 + pos) 1 mode) >= 4;
  # The declared users who may read a key in /run/keys: its owner, and the
  # users of its group (their own or one of their extra groups), when its
  # mode lets them; root needs nothing.
  runKeys = lib.filter (k: lib.hasPrefix "/run/keys/" k.dest) (builtins.attrValues cfg.keys);
  keyReaders = lib.unique (lib.concatLists (lib.mapAttrsToList (n: u:
    let
      name = u.name or n;
      inGroup = g: (u.group or null) == g || builtins.elem g (u.extraGroups or [ ]);
      readsKey = k: k.user == name && reads k.mode 0 || k.group != "root" && inGroup k.group && reads k.mode 1;
    in
    lib.optional (name != "root" && builtins.any readsKey runKeys) name
  ) (if runKeys == [ ] then { } else config.users.users)));

  keyPath = name: k: nameValuePair "${name}-key" {
    description = "nix-hive key ${name} appears";
    wantedBy = [ "multi-user.target" ];
    pathConfig.PathExists = k.dest;
  };
in
{
  options.nix-hive = {
    publicKey = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "hive-1:a7RJ08eMPX1tbUR8C2N1jnfhO8TmOQACJJdmILnd/2E=";
      description = "The hive's public signing key (nix-hive keygen); trusted for substitution.";
    };
    store = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "ssh://nix-ssh@portico";
      description = ''
        The store this host substitutes its systems from (another instance or a
        binary cache URL). A store instance with serveStore.enable serves as the
        user nix-ssh: give it `storeUser = "nix-ssh";` in the hive, so nix-hive
        uses the same login when it substitutes.
      '';
    };
    keys = mkOption {
      type = types.attrsOf (types.submodule keyModule);
      default = { };
      example = { db-password = { user = "postgres"; group = "postgres"; }; };
      description = ''
        The keys nix-hive uploads to this host: metadata only, never values
        (the hive's keys, which nix-hive fills in for modules systems). Each
        gets a <name>-key.service, active while its file exists.
      '';
    };
    sudo = {
      user = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "deploy";
        description = ''
          The login nix-hive deploys as when it is not root. It may run
          nix-hive-agent as root through sudo, and nothing else.
        '';
      };
      noPassword = mkOption {
        type = types.bool;
        default = false;
        description = "Whether sudo lets the login run nix-hive-agent without its password (otherwise nix-hive asks for it once per run).";
      };
    };
    bootFallback = {
      enable = mkEnableOption ''
        what `nix-hive deploy --goal boot --reboot` needs to fall back from a
        new system that does not boot: with GRUB, booting the saved entry
        (boot.loader.grub.default = "saved"), so that grub-reboot's one-time
        entry and grub-set-default's default apply; systemd-boot needs nothing
      '';
      watchdog = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "30s";
        description = ''
          Arms the hardware watchdog for this long (systemd.watchdog.runtimeTime):
          a boot that hangs is reset by the hardware, and that reset boots the
          default entry, which nix-hive's boot fallback kept the system that ran
          before. This is what makes the fallback automatic; without a
          watchdog, a power cycle by the operator does it.
        '';
      };
    };
    serveStore = {
      enable = mkEnableOption "serving this host's Nix store to consumer instances over SSH";
      keys = mkOption {
        type = types.listOf types.str;
        default = [ ];
        description = "SSH public keys of consumers allowed to read the store (nix-store --serve, read-only).";
      };
    };
  };

  config = {
    environment.systemPackages = mkIf (cfg.sudo.user != null) [ agent ];
    security.sudo.extraRules = mkIf (cfg.sudo.user != null) [{
      users = [ cfg.sudo.user ];
      runAs = "root";
      commands = [{
        command = "/run/current-system/sw/bin/nix-hive-agent";
        options = optional cfg.sudo.noPassword "NOPASSWD";
      }];
    }];
    systemd.tmpfiles.rules = [ "d /run/keys 0750 root keys -" ];
    users.groups.keys.members = keyReaders;
    systemd.services = mapAttrs' keyService cfg.keys;
    systemd.paths = mapAttrs' keyPath cfg.keys;
    nix.settings.trusted-public-keys = optional (cfg.publicKey != null) cfg.publicKey;
    nix.settings.substituters = optional (cfg.store != null) cfg.store;
    nix.settings.require-sigs = lib.mkDefault true;
    boot.loader.grub.default = mkIf cfg.bootFallback.enable (lib.mkDefault "saved");
    systemd.watchdog.runtimeTime = mkIf (cfg.bootFallback.watchdog != null) cfg.bootFallback.watchdog;
    nix.sshServe = mkIf cfg.serveStore.enable {
      enable = true;
      keys = cfg.serveStore.keys;
      protocol = "ssh";
    };
  };
}
