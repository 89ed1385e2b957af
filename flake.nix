{
  description = "nix-hive: deploy a handful of NixOS systems to fleets of hosts";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs = { self, nixpkgs }:
    let
      platforms = [ "x86_64-linux" "aarch64-linux" "x86_64-darwin" "aarch64-darwin" ];
      forAll = f: nixpkgs.lib.genAttrs platforms (system: f nixpkgs.legacyPackages.${system});
      hiveLib = import ./lib/hive.nix;
      version = "0.1.0";
    in
    {
      # nix-hive.lib.mkHive { systems = ...; instances = ...; } is the `hive`
      # output of a user's flake.
      lib = { inherit (hiveLib) mkHive helpers; };

      nixosModules.default = hiveLib.nixosModule;

      packages = forAll (pkgs: {
        default = pkgs.buildGoModule {
          pname = "nix-hive";
          inherit version;
          src = ./.;
          # Kept in sync with go.sum by TestFlakeVendorHash (cmd/nix-hive).
          vendorHash = "sha256-EwclPaVJxDXT8/dCDfnFiIIOELNLGh0g6WA229K2EWk=";
          subPackages = [ "cmd/nix-hive" ];
          ldflags = [ "-s" "-w" "-X main.version=${version}" ];
          # The test suite needs root, sshd and a lab of hosts; CI runs it.
          doCheck = false;
          meta = {
            description = "Deploy a handful of NixOS systems to fleets of hosts";
            mainProgram = "nix-hive";
            platforms = nixpkgs.lib.platforms.unix;
          };
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
