# NixOS module for hosts managed by nix-hive (flake: nixosModules.default).
#
# A consumer instance realises its system from its store instance, and only
# accepts paths signed by the hive key; a store instance serves its Nix store
# over SSH to its consumers. nix-hive passes the same settings on the command
# line when it substitutes, so this module is what makes them permanent (and
# what lets a host substitute by itself, e.g. during `nixos-rebuild`).
{ config, lib, ... }:
let
  cfg = config.nix-hive;
  inherit (lib) mkOption mkEnableOption mkIf types optional;
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
    nix.settings.trusted-public-keys = optional (cfg.publicKey != null) cfg.publicKey;
    nix.settings.substituters = optional (cfg.store != null) cfg.store;
    nix.settings.require-sigs = lib.mkDefault true;
    nix.sshServe = mkIf cfg.serveStore.enable {
      enable = true;
      keys = cfg.serveStore.keys;
      protocol = "ssh";
    };
  };
}
