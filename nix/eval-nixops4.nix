# Evaluates Drover's NixOps4 provider module (nix/nixops4-provider.nix)
# with nixpkgs' module system, against a stand-in for NixOps4's provider
# options, and checks the example deployment (examples/nixops4) against
# it: every member's type is one the provider has and its inputs are
# exactly what that type declares (an unknown or mistyped input fails, as
# NixOps4 would fail it). Run by scripts/eval-modules.sh.
{ libPath }:

let
  lib = import (libPath + "/lib");
  inherit (lib) mkOption types;

  # NixOps4's provider options, as far as a provider module sets them.
  standIn = {
    options = {
      name = mkOption { type = types.str; };
      description = mkOption { type = types.str; };
      sourceBaseUrl = mkOption { type = types.str; };
      sourceName = mkOption { type = types.str; };
      executable = mkOption { type = types.str; };
      args = mkOption { type = types.listOf types.str; default = [ ]; };
      type = mkOption { type = types.str; default = "stdio"; };
      resourceTypes = mkOption {
        type = types.attrsOf (types.submodule {
          options = {
            description = mkOption { type = types.str; };
            requireState = mkOption { type = types.bool; };
            inputs = mkOption { type = types.deferredModule; };
            outputs = mkOption { type = types.deferredModule; };
          };
        });
      };
    };
  };

  provider = (lib.evalModules {
    class = "nixops4Provider";
    modules = [
      standIn
      (import ../nix/nixops4-provider.nix { drover = system: "/nix/store/00000000000000000000000000000000-drover-${system}"; })
    ];
    specialArgs.resourceProviderSystem = "x86_64-linux";
  }).config;

  # Each type's input and output options, evaluated.
  optionsOf = module: builtins.attrNames (removeAttrs (lib.evalModules { modules = [ module ]; }).options [ "_module" ]);
  typeReport = lib.mapAttrsToList
    (name: t: "${name}: ${toString (builtins.length (optionsOf t.inputs))} inputs, ${toString (builtins.length (optionsOf t.outputs))} outputs, requireState ${lib.boolToString t.requireState}")
    provider.resourceTypes;

  # The example deployment, with each member's outputs standing in as
  # strings and numbers of the right kind.
  outputsOf = t: lib.mapAttrs (n: o: if o.type.name == "int" then 1 else if o.type.name == "bool" then true else "output-${n}")
    (removeAttrs (lib.evalModules { modules = [ t.outputs ]; }).options [ "_module" ]);
  providers.drover = lib.mapAttrs (name: _: name) provider.resourceTypes;
  deployment = import ../examples/nixops4/deployment.nix { inherit providers members; };
  members = lib.mapAttrs (_: m: m // { outputs = outputsOf provider.resourceTypes.${m.type}; }) deployment.members;
  checkMember = name: m:
    let
      t = provider.resourceTypes.${m.type} or (throw "member ${name}: the provider has no type ${m.type}");
      inputs = (lib.evalModules { modules = [ t.inputs { config = m.inputs; } ]; }).config;
      stated = m ? state;
    in
    assert lib.assertMsg (!t.requireState || stated) "member ${name}: type ${m.type} needs state";
    builtins.deepSeq inputs "example member ${name}: ${m.type}, inputs check";
in
{
  report =
    [ "provider ${provider.name}: ${provider.executable} ${lib.concatStringsSep " " provider.args}" ]
    ++ typeReport
    ++ lib.mapAttrsToList checkMember deployment.members;
}
