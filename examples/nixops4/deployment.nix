# The resources of the example (see flake.nix). Outputs feed inputs: the
# database machine's address reaches the web machine's facts, the bucket's
# name its deployment.
{ providers, members, ... }:
let
  # The systems: built from the fleet's flake on each machine.
  fleet = "github:example/social-fleet";
in
{
  # NixOps4's own state, kept by the coordinator with every event.
  members.state = {
    type = providers.drover.state;
    inputs.name = "social";
  };

  members.tenant = {
    type = providers.drover.tenant;
    state = [ "state" ];
    inputs = {
      domain = "social.example";
      admin_email = "ops@social.example";
    };
  };

  # A new VM on the coordinator's Proxmox provider `pve`.
  members.db = {
    type = providers.drover.machine;
    state = [ "state" ];
    inputs = {
      name = "social-db";
      provider = "pve";
      cores = 2;
      memory = "4GiB";
      disk = "40GiB";
      tenant = members.tenant.outputs.domain;
      labels.role = "db";
    };
  };

  # A machine that runs already, enrolled with a token, taken over.
  members.web = {
    type = providers.drover.machine;
    state = [ "state" ];
    inputs = {
      name = "social-web";
      adopt = "social-web";
      tenant = members.tenant.outputs.domain;
      labels.role = "web";
    };
  };

  members.media = {
    type = providers.drover.bucket;
    state = [ "state" ];
    inputs = {
      name = "social-media";
      public = true;
      quota = "100GiB";
    };
  };

  members.mediaKey = {
    type = providers.drover.s3_key;
    state = [ "state" ];
    inputs = {
      name = "social-web-media";
      bucket = members.media.outputs.name;
      write = true;
    };
  };

  members.pgdata = {
    type = providers.drover.volume;
    state = [ "state" ];
    inputs = {
      name = "social-pgdata";
      size = "20GiB";
      replicas = 2;
    };
  };

  members.dbSystem = {
    type = providers.drover.deployment;
    state = [ "state" ];
    inputs = {
      machine = members.db.outputs.id;
      flake = "${fleet}#social-db";
      volumes.${members.pgdata.outputs.name}.mount = "/var/lib/postgresql";
      secret_files.db-password = "secrets/db-password";
      checks = [ "unit:postgresql.service" "tcp:127.0.0.1:5432" ];
    };
  };

  members.webSystem = {
    type = providers.drover.deployment;
    state = [ "state" ];
    inputs = {
      machine = members.web.outputs.id;
      flake = "${fleet}#social-web";
      facts = {
        db_host = members.db.outputs.address;
        # Deployed after the database: its generation is an input.
        db_generation = toString members.dbSystem.outputs.generation;
      };
      buckets = [ members.media.outputs.name ];
      secret_files = {
        db-password = "secrets/db-password";
        app-key = "secrets/app-key";
      };
      checks = [ "unit:mastodon-web.service" "http://127.0.0.1:3000/health" ];
      health_deadline = "120s";
    };
  };
}
