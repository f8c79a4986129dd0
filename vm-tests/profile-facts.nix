# checks.<system>.profile-facts: each profile's environment script, as the
# module renders it, run against facts that lack the bucket (and against no
# secrets): it must fail, naming what is missing, and write no environment
# file — a service must never start on empty settings.
#
#   nix build .#checks.x86_64-linux.profile-facts
{ pkgs, self, nixpkgs }:

let
  inherit (pkgs) lib;
  system = profile: extra: nixpkgs.lib.nixosSystem {
    modules = [
      self.nixosModules.${profile}
      {
        boot.loader.grub.enable = false;
        fileSystems."/" = { device = "none"; fsType = "tmpfs"; };
        system.stateVersion = "26.11";
        nixpkgs.hostPlatform = pkgs.stdenv.hostPlatform.system;
        services.drover-agent = { enable = true; fromSeed = true; };
      }
      extra
    ];
  };
  profiles = {
    mastodon = system "mastodon" {
      services.drover-mastodon = { enable = true; domain = "social.example.org"; bucket = "media"; };
      services.mastodon = { smtp.fromAddress = "noreply@social.example.org"; streamingProcesses = 1; };
    };
    peertube = system "peertube" {
      services.drover-peertube = { enable = true; domain = "video.example.org"; bucket = "media"; };
      services.peertube = { secrets.secretsFile = "/run/keys/peertube-secret"; redis.createLocally = true; database.createLocally = true; };
    };
    pixelfed = system "pixelfed" {
      services.drover-pixelfed = { enable = true; domain = "pics.example.org"; bucket = "media"; };
    };
  };
  script = name: sys: pkgs.writeText "drover-${name}-env.sh" sys.config.systemd.services."drover-${name}-env".script;
in
pkgs.runCommand "drover-profile-facts" { nativeBuildInputs = [ pkgs.bash pkgs.jq pkgs.coreutils pkgs.gnused ]; } ''
  mkdir -p run/secrets
  # Everything but the bucket.
  echo '{"s3_endpoint":"http://s3.example.org:3900","s3_region":"garage","s3_public_url.media":"https://media.example.org"}' > run/facts.json
  ${lib.concatStringsSep "\n" (lib.mapAttrsToList (name: sys: ''
    # Paths into the build directory, and the build user's group: a script
    # that went on past the missing fact would get as far as its file.
    sed "s|/run/drover|$PWD/run|g; s|/var/lib/drover-|$PWD/state/drover-|g; s|chgrp [a-z-]* |chgrp $(id -g) |" ${script name sys} > ${name}.sh
    if bash ${name}.sh 2> ${name}.err; then
      echo "${name}: the environment script succeeded without the bucket's fact" >&2; exit 1
    fi
    grep -q "fact s3_bucket.media is missing" ${name}.err || { echo "${name}: the failure does not name the missing fact:" >&2; cat ${name}.err >&2; exit 1; }
    [ ! -e run/env/${name}.env ] || { echo "${name}: an environment file was written" >&2; exit 1; }
    echo "${name}: refused, naming the missing fact" >> $out
  '') profiles)}
''
