# NixOS tests of Drover, run by `nix flake check` on a machine with Nix,
# nixpkgs and (preferably) KVM. Each is a pkgs.testers.runNixOSTest.
{ pkgs, self }:

let
  common = import ./common.nix { inherit self; inherit (pkgs) lib; };
in
{
  fleet = pkgs.testers.runNixOSTest (import ./fleet.nix { inherit common; });
  s3-service = pkgs.testers.runNixOSTest (import ./s3-service.nix { inherit common; });
  service-profile = pkgs.testers.runNixOSTest (import ./service-profile.nix { inherit common; });
}
