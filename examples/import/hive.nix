# Instances imported from infrastructure-as-code outputs instead of written
# by hand: 200 hosts from `terraform output -json` (4 regions × a bastion,
# web, app, db and cache servers) and 4 CI runners from
# `pulumi stack output --json`. See README.md.
#
#   terraform output -json > terraform.json
#   pulumi stack output --json --show-secrets > pulumi.json
#   nix-hive -c examples/import plan '@role=web'
#   nix-hive -c examples/import ssh-config
#
# Systems are test stand-ins (../testsystems) so the example evaluates
# without nixpkgs; in a real hive they would be `modules = [ ./web.nix ];`.
{ lib }:
let
  testSystem = import ../testsystems;
in
{
  systems = lib.genAttrs [ "bastion" "web" "app" "db" "cache" "runner" ]
    (name: { toplevel = testSystem { inherit name; }; });

  instances = lib.mergeInstances {
    # Each element of the output `hosts` is
    #   { name, role, region, az, public_ip, private_ip, bastion, host_key,
    #     instance_id, tags = { env, team }; }
    # The defaults read name, the address (public_ip, else private_ip),
    # host_key, and tags from `tags` and `role` ("env=prod", "role=web");
    # `bastion` (its public address) becomes the jump host's instance name.
    # The rest (region, az, instance_id) is kept as meta.
    terraform = lib.fromTerraform {
      json = ./terraform.json;
      output = "hosts";
      system = host: host.role;
      # Hosts behind a bastion are reached at their private address even
      # when they have a public one too.
      host = host: if host.bastion != null then host.private_ip else host.public_ip;
    };

    # `ciRunners` is an object keyed by name: { privateIp, publicIp,
    # hostKey, labels = { pool, arch }; zone }.
    pulumi = lib.fromPulumi {
      json = ./pulumi.json;
      output = "ciRunners";
      system = "runner";
      addTags = [ "pulumi" ];
      # A user function sees the element and the instance made from it.
      map = runner: instance: instance // {
        meta = { inherit (runner) zone; };
        ssh.ServerAliveInterval = 30;
      };
    };
  };
}
