{
  description = "nix-hive: deploy a handful of NixOS systems to fleets of hosts";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs = { self, nixpkgs }:
    let
      platforms = [ "x86_64-linux" "aarch64-linux" "x86_64-darwin" "aarch64-darwin" ];
      forAll = f: nixpkgs.lib.genAttrs platforms (system: f nixpkgs.legacyPackages.${system});
      hiveLib = import ./lib/hive.nix;
    in
    {
      # nix-hive.lib.mkHive { systems = ...; instances = ...; } is the `hive`
      # output of a user's flake; nix-hive.lib.mkDevShell { hive = self;
      # pkgs = ...; } gives its repository a shell with nix-hive and the
      # hive preselected (lib/devshell.nix).
      lib = {
        inherit (hiveLib) mkHive helpers;
        mkDevShell = import ./lib/devshell.nix { inherit nixpkgs; };
      };

      nixosModules.default = hiveLib.nixosModule;

      # The same package default.nix gives nix-env -if and nix-build.
      packages = forAll (pkgs: {
        default = pkgs.callPackage ./package.nix {
          # A clean git tree's commit; a dirty one's "<commit>-dirty" (on
          # Nix releases that say it); unknown for other sources.
          revision = self.rev or self.dirtyRev or null;
        };
      });

      apps = forAll (pkgs: {
        default = {
          type = "app";
          program = "${self.packages.${pkgs.stdenv.hostPlatform.system}.default}/bin/nix-hive";
        };
      });

      devShells = forAll (pkgs: {
        default = pkgs.mkShell {
          packages = [ pkgs.go pkgs.gopls pkgs.openssh pkgs.nix pkgs.nftables pkgs.iproute2 ];
        };
      });
    };
}
