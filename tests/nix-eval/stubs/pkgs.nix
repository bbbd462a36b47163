# A stand-in for the `pkgs` the Relay modules see on a NixOS host that applied the flake's
# `overlays.default`: every value the modules take from `pkgs` is here, derivation-shaped
# (real `derivation` values that are never built), so option types, `lib.getExe` and string
# interpolation behave as with nixpkgs. Anything else the modules reach for is missing on
# purpose: the evaluation fails and names it.
{ lib
, hostSystem ? "x86_64-linux"
, buildSystem ? hostSystem
}:

let
  # A derivation that would fail if anyone built it; `meta` and `passthru` stay out of the
  # derivation's environment (a set is no environment variable), as stdenv does.
  fake = name: env:
    let
      drv = derivation (removeAttrs env [ "meta" "passthru" ] // {
        inherit name;
        system = buildSystem;
        builder = "/bin/sh";
        args = [ "-c" "echo 'tests/nix-eval: a stand-in derivation, never built' >&2; exit 1" ];
      });
    in
    drv // (env.passthru or { }) // { meta = env.meta or { }; };

  package = pname: mainProgram: fake "${pname}-0.1.0" {
    meta = lib.optionalAttrs (mainProgram != null) { inherit mainProgram; };
  };

  relayPackage = name: package name name;

  # What a binary shows up as: `${pkg}/bin/<name>` (lib.getExe).
  script = name: text: fake name { inherit text; };

  # As nixpkgs' `pkgs.formats.toml`: the module type of a TOML value (no null: TOML has
  # none) and `generate`, here a derivation whose environment holds the JSON of the value.
  # Evaluating it forces the whole value, so a function or a null deep inside fails here
  # as remarshal would fail on the real machine.
  toml = {}: {
    type =
      let
        valueType = lib.types.oneOf [
          lib.types.bool
          lib.types.int
          lib.types.float
          lib.types.str
          lib.types.path
          (lib.types.attrsOf valueType)
          (lib.types.listOf valueType)
        ] // { description = "TOML value"; };
      in
      valueType;

    generate = name: value:
      let
        nullsIn = prefix: v:
          if v == null then [ prefix ]
          else if builtins.isAttrs v && !lib.isDerivation v
          then lib.concatLists (lib.mapAttrsToList (k: nullsIn "${prefix}.${k}") v)
          else if builtins.isList v then lib.concatLists (lib.imap0 (i: nullsIn "${prefix}[${toString i}]") v)
          else [ ];
        nulls = nullsIn "" value;
      in
      if nulls != [ ]
      then throw "formats.toml: ${name}: TOML has no null, at ${lib.concatStringsSep ", " nulls}"
      else
        fake name {
          value = builtins.toJSON value;
          passAsFile = [ "value" ];
          # What the file would hold, for ./run's check-config with built binaries.
          passthru.tomlValue = value;
        };
  };

  platform = system: lib.systems.elaborate { inherit system; };
in
{
  stdenv = {
    hostPlatform = platform hostSystem;
    buildPlatform = platform buildSystem;
  };

  formats = { inherit toml; };

  writeShellScript = script;
  writeShellScriptBin = name: text: fake name {
    inherit text;
    meta.mainProgram = name;
  };
  writeText = name: text: fake name { inherit text; };
  runCommand = name: env: buildCommand: fake name (env // { inherit buildCommand; });

  coreutils = package "coreutils" null;
  findutils = package "findutils" null;
  gnugrep = package "gnugrep" "grep";
  gnused = package "gnused" "sed";
  systemd = package "systemd" "systemctl";
  postgresql = package "postgresql" "postgres" // { psqlSchema = "17"; };
  rabbitmq-server = package "rabbitmq-server" "rabbitmq-server";

  # As if the flake's overlays.default were applied.
  relay-server = relayPackage "relay-server";
  relay-identity = relayPackage "relay-identity";
  relay-management = relayPackage "relay-management";
  relay-connector = relayPackage "relay-connector";
  relayctl = relayPackage "relayctl";
}
