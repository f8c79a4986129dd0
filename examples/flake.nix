# The fleets of fleet.toml and fleet-proxmox.toml as flake outputs, for
# people who write them in Nix: `drover plan --flake ./examples#droverFleet`
# reads one with `nix eval --json` and plans the same as the TOML file.
{
  outputs = { self }:
    let
      garage = zone: {
        provider = "pve";
        cores = 2;
        memory = "2GiB";
        disk = "200GiB";
        labels = { "garage.zone" = zone; "garage.capacity" = "150GiB"; };
      };
      database = tenant: { provider = "pve"; inherit tenant; cores = 2; memory = "4GiB"; };
      postgres = secret: {
        flake = "github:example/fleet#postgres";
        secrets.postgres-password = "secrets/${secret}";
        checks = [ "unit:postgresql.service" ];
      };
    in
    {
      droverFleet = {
        tenants."social.example.org" = { admin_email = "admin@social.example.org"; admin_user = "owner"; };
        tenants."photos.example.net".admin_email = "ops@photos.example.net";

        machines = {
          social-db = { adopt = "vm1"; tenant = "social.example.org"; };
          social-web = { adopt = "vm2"; tenant = "social.example.org"; };
          photos-web = { adopt = "vm3"; tenant = "photos.example.net"; };
        };

        buckets = {
          social-media = { public = true; quota = "1GiB"; machines = [ "social-web" ]; };
          photos-media = { public = true; quota = "1GiB"; machines = [ "photos-web" ]; };
        };

        volumes.social-pg = { size = "64MiB"; machine = "social-db"; mount = "/var/lib/postgresql"; };

        services = {
          social-db = {
            machines = [ "social-db" ];
            flake = "github:example/fleet#postgres";
            secrets.postgres-password = "secrets/social-pg-password";
          };
          social-web = {
            machines = [ "social-web" ];
            flake = "github:example/fleet#mastodon";
            secrets.db-password = "secrets/social-pg-password";
            facts = { db_host = "\${machines.social-db.address}"; media_bucket = "\${buckets.social-media.name}"; };
            checks = [ "s3:social-media" ];
            after = [ "social-db" ];
          };
          photos-web = {
            machines = [ "photos-web" ];
            flake = "github:example/fleet#pixelfed";
            secrets.db-password = "secrets/photos-pg-password";
            facts.media_bucket = "\${buckets.photos-media.name}";
            checks = [ "s3:photos-media" ];
          };
        };
      };

      droverFleetProxmox = {
        tenants."social.example.org" = { admin_email = "admin@social.example.org"; admin_user = "owner"; };
        tenants."photos.example.net".admin_email = "ops@photos.example.net";

        machines = {
          garage-1 = garage "dc1";
          garage-2 = garage "dc2";
          garage-3 = garage "dc3";
          social-db = database "social.example.org";
          social-web = { provider = "pve"; tenant = "social.example.org"; cores = 4; memory = "8GiB"; };
          photos-db = database "photos.example.net";
          photos-web = { adopt = "photos-web-01"; tenant = "photos.example.net"; };
        };

        buckets = {
          social-media = { public = true; quota = "500GiB"; machines = [ "social-web" ]; };
          photos-media = { public = true; quota = "200GiB"; machines = [ "photos-web" ]; };
        };

        volumes = {
          social-pg = { size = "50GiB"; machine = "social-db"; mount = "/var/lib/postgresql"; };
          photos-pg = { size = "20GiB"; machine = "photos-db"; mount = "/var/lib/postgresql"; filesystem = "xfs"; };
        };

        services = {
          garage = {
            machines = [ "garage-1" "garage-2" "garage-3" ];
            flake = "github:example/fleet#garage";
            checks = [ "tcp:127.0.0.1:3903" ];
            strategy = { canary = 1; max_parallel = "1"; };
          };
          social-db = { machines = [ "social-db" ]; } // postgres "social-pg-password";
          social-web = {
            machines = [ "social-web" ];
            flake = "github:example/fleet#mastodon";
            secrets.db-password = "secrets/social-pg-password";
            facts = { db_host = "\${machines.social-db.address}"; media_bucket = "\${buckets.social-media.name}"; };
            checks = [ "unit:mastodon-web.service" "s3:social-media" ];
            after = [ "social-db" "garage" ];
          };
          photos-db = { machines = [ "photos-db" ]; } // postgres "photos-pg-password";
          photos-web = {
            machines = [ "photos-web" ];
            flake = "github:example/fleet#pixelfed";
            secrets.db-password = "secrets/photos-pg-password";
            facts = { db_host = "\${machines.photos-db.address}"; media_bucket = "\${buckets.photos-media.name}"; };
            checks = [ "unit:phpfpm-pixelfed.service" "s3:photos-media" ];
            after = [ "photos-db" "garage" ];
          };
        };
      };
    };
}
