# A NixOps4 deployment that uses Drover as its resource provider: a tenant,
# a database VM made on a Proxmox provider, a web machine adopted by
# hostname, a media bucket with a key, a volume for the database, and
# Mastodon-style services deployed to both through Drover's agents.
# docs/nixops4.md walks through it.
#
#   export DROVER_ADMIN_BUNDLE=/var/lib/drover/admin.bundle
#   nixops4 apply
{
  inputs = {
    nixops4.url = "github:nixops4/nixops4";
    drover.url = "path:../..";
  };

  outputs = inputs: {
    nixops4 = inputs.nixops4.lib.mkRoot {
      modules = [
        ./deployment.nix
        { providers.drover = inputs.drover.modules.nixops4Provider.drover; }
      ];
    };
  };
}
