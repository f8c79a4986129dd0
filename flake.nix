{
  description = "Drover: pull-based deployment for fleets of NixOS virtual machines";

  # The current stable NixOS release; `nix flake lock` pins it (see
  # docs/nixos.md). Its Rust must be at least the workspace's rust-version:
  # the packages refuse to evaluate otherwise.
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-26.11";

  outputs = { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAllSystems = f: lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});

      # Exactly what Cargo needs (nix/cargo-sources.nix, which a test builds
      # from on its own).
      src = lib.fileset.toSource {
        root = ./.;
        fileset = lib.fileset.unions (map (p: ./. + "/${p}") (import ./nix/cargo-sources.nix));
      };

      minimumRust = (builtins.fromTOML (builtins.readFile ./Cargo.toml)).workspace.package.rust-version;

      # One crate of the workspace, built from Cargo.lock. The test suite
      # needs Garage, Nix and sockets: it runs with scripts/test.sh, and the
      # NixOS tests run as this flake's checks.
      crate = pkgs: { pname, package, mainProgram }:
        assert lib.assertMsg (lib.versionAtLeast pkgs.rustc.version minimumRust)
          "drover needs Rust ${minimumRust} or newer; this nixpkgs has ${pkgs.rustc.version} (follow a newer NixOS release)";
        pkgs.rustPlatform.buildRustPackage {
          inherit pname src;
          version = "0.1.0";
          cargoLock.lockFile = ./Cargo.lock;
          cargoBuildFlags = [ "--package" package ];
          nativeBuildInputs = [ pkgs.pkg-config pkgs.protobuf ];
          doCheck = false;
          meta = {
            description = "Drover: pull-based deployment for fleets of NixOS virtual machines";
            license = lib.licenses.agpl3Plus;
            inherit mainProgram;
          };
        };

      packagesFor = pkgs: self.packages.${pkgs.stdenv.hostPlatform.system};

      # Modules carry a key so that importing several of them (each profile
      # imports the agent module) declares every option once.
      agent = {
        key = "drover#agent";
        imports = [
          ./nixos-module/agent.nix
          ({ pkgs, ... }: { services.drover-agent.package = lib.mkDefault (packagesFor pkgs).drover-agent; })
        ];
      };
      coordinator = {
        key = "drover#coordinator";
        imports = [
          ./nixos-module/coordinator.nix
          ({ pkgs, ... }: { services.drover.package = lib.mkDefault (packagesFor pkgs).drover; })
        ];
      };
      withAgent = name: path: { key = "drover#${name}"; imports = [ agent path ]; };
    in
    {
      packages = forAllSystems (pkgs: rec {
        drover = crate pkgs { pname = "drover"; package = "drover-coordinator"; mainProgram = "drover"; };
        drover-agent = crate pkgs { pname = "drover-agent"; package = "drover-agent"; mainProgram = "drover-agent"; };
        default = drover;
      });

      # `nixpkgs.overlays = [ drover.overlays.default ]` adds pkgs.drover and
      # pkgs.drover-agent, built with that nixpkgs.
      overlays.default = final: prev: {
        drover = crate final { pname = "drover"; package = "drover-coordinator"; mainProgram = "drover"; };
        drover-agent = crate final { pname = "drover-agent"; package = "drover-agent"; mainProgram = "drover-agent"; };
      };

      # `nix run .#drover -- --help`, `nix run .#drover-agent -- --help`.
      apps = forAllSystems (pkgs:
        let app = pkg: { type = "app"; program = lib.getExe pkg; }; in rec {
          drover = app (packagesFor pkgs).drover;
          drover-agent = app (packagesFor pkgs).drover-agent;
          default = drover;
        });

      nixosModules = rec {
        inherit agent coordinator;
        garage-node = withAgent "garage-node" ./nixos-module/garage-node.nix;
        mastodon = withAgent "mastodon" ./nixos-module/services/mastodon.nix;
        peertube = withAgent "peertube" ./nixos-module/services/peertube.nix;
        pixelfed = withAgent "pixelfed" ./nixos-module/services/pixelfed.nix;
        default = { imports = [ agent coordinator garage-node mastodon peertube pixelfed ]; };
      };

      # Drover as a NixOps4 resource provider (docs/nixops4.md):
      # `providers.drover = drover.modules.nixops4Provider.drover;` in a
      # NixOps4 deployment.
      modules.nixops4Provider.drover = import ./nix/nixops4-provider.nix { drover = system: self.packages.${system}.drover; };

      # `modules` evaluates every module in a minimal configuration (fast, no
      # VM); the others are NixOS tests (QEMU, KVM recommended): `nix flake
      # check`, or one with `nix build .#checks.x86_64-linux.fleet -L`.
      checks = forAllSystems (pkgs:
        import ./vm-tests { inherit pkgs self; } // {
          modules = import ./vm-tests/modules.nix { inherit pkgs self nixpkgs; };
          profile-facts = import ./vm-tests/profile-facts.nix { inherit pkgs self nixpkgs; };
          inherit (packagesFor pkgs) drover drover-agent;
        });

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          inputsFrom = [ (packagesFor pkgs).drover ];
          packages = with pkgs; [ cargo rustc clippy rustfmt rust-analyzer garage_2 etcd jq nixfmt-rfc-style ];
        };
      });

      formatter = forAllSystems (pkgs: pkgs.nixfmt-rfc-style);
    };
}
