{
  description = "A hive as a flake: two systems on three hosts";

  # In your own repository, take the library from nix-hive's flake:
  #   inputs.nix-hive.url = "github:nix-hive/nix-hive";
  #   outputs = { self, nix-hive, nixpkgs }: {
  #     hive = nix-hive.lib.mkHive { nixpkgs = nixpkgs; systems.web.modules = [ ./web.nix ]; ... };
  #   };
  # This example lives inside nix-hive's own repository and must evaluate
  # offline, so it imports the library by path and uses test systems.
  outputs = { self }:
    let
      nix-hive = { lib = import ../../lib/hive.nix; };
      testSystem = import ../testsystems;
    in
    {
      hive = nix-hive.lib.mkHive {
        defaults.user = "root";
        systems = {
          web.toplevel = testSystem { name = "web"; };
          db.toplevel = testSystem { name = "db"; };
        };
        instances = {
          web-1 = { system = "web"; host = "192.0.2.10"; tags = [ "web" ]; };
          web-2 = { system = "web"; host = "192.0.2.11"; tags = [ "web" ]; store = "web-1"; };
          db-1 = { system = "db"; host = "192.0.2.20"; tags = [ "db" ]; meta.role = "primary"; };
        };
      };
    };
}
