# The seed example: a jump box (portico) that also serves as the store for
# three web servers behind it, and a storage server reached directly.
#
#   nix-hive -c examples/seed build          # build the two... three systems once
#   nix-hive -c examples/seed deploy portico '*'
#
# Systems here are test stand-ins (../testsystems) so the example builds
# without nixpkgs; in a real hive they would be `modules = [ ./www.nix ];`.
let
  testSystem = import ../testsystems;
  # Addresses and host keys come from the lab when it runs the demo; these
  # defaults document the shape.
  lab = if builtins.pathExists ./lab.nix then import ./lab.nix else { };
  at = name: attrs: attrs // (lab.${name} or { });
in
{
  defaults = {
    user = "root";
    port = 22;
    # Keys (secrets) are uploaded over SSH when a host is deployed, into
    # /run/keys, and never enter the Nix store. A text key suits a demo
    # only: real values come from a file (a string path on this machine,
    # read at deploy time) or a command (e.g. [ "pass" "show" "fleet/x" ]).
    keys.fleet-token = { text = "demo token: not a real secret"; };
  };

  signing.keyFile = "keys/hive.sec";

  systems = {
    portico.toplevel = testSystem { name = "portico"; };
    www = {
      toplevel = testSystem { name = "www"; };
      # Every www instance gets it before its system is switched to, owned
      # by root and readable by nogroup's members (0440): /run/keys lets
      # them reach it by name (0751: enter, not list). On NixOS, whose
      # /run/keys is root:keys 0750, they read it as members of keys
      # (nixosModules.default adds them; see README: Keys).
      keys.tls-key = {
        command = [ "sh" "-c" "echo demo TLS key made $(date -u +%F)" ];
        user = "root"; group = "nogroup"; mode = "0440";
      };
    };
    storage.toplevel = testSystem { name = "storage"; };
  };

  instances = {
    portico = at "portico" { system = "portico"; host = "203.0.113.4"; tags = [ "edge" ]; };
    storage = at "storage" { system = "storage"; host = "203.0.113.9"; tags = [ "storage" ]; };
    www-1 = at "www-1" { system = "www"; host = "10.22.0.8"; jump = "portico"; store = "portico"; tags = [ "web" "canary" ]; };
    www-2 = at "www-2" { system = "www"; host = "10.22.0.9"; jump = "portico"; store = "portico"; tags = [ "web" ]; };
    www-3 = at "www-3" { system = "www"; host = "10.22.0.10"; jump = "portico"; store = "portico"; tags = [ "web" ]; };
  };
}
