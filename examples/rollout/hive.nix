# A fleet of web servers rolled out by the policy in hive.star: one canary
# first, then batches of five, each host checked over HTTP and with
# `systemctl is-system-running` after activation; a failed host is rolled
# back, and a failed canary stops the rollout.
#
#   nix-hive -c examples/rollout plan      # shows the waves, touches nothing
#   nix-hive -c examples/rollout deploy
#
# The systems are test stand-ins (../testsystems) so this evaluates here; on
# a real fleet they are NixOS configurations running a web server on
# meta.http_port, and systemctl exists.
{ lib }:
let
  testSystem = import ../testsystems;
in
{
  signing.keyFile = "keys/hive.sec";
  systems.web.toplevel = testSystem { name = "web"; };
  instances = lib.genAttrs (map (i: "web-${lib.fixedWidth 2 i}") (lib.range 1 12)) (name: {
    system = "web";
    host = "${name}.example.internal";
    tags = [ "web" ] ++ lib.optional (name == "web-04") "canary";
    meta.http_port = 8080;
  });
}
