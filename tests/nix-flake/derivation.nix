# The core of every stand-in: stdenv.mkDerivation's checks (argument names from
# accepted.nix, dependency types, `env`, meta names, meta.platforms and meta.broken against
# the host) and a real derivation with builder /bin/sh that fails if anyone builds it, so
# `nix flake check --no-build` can instantiate it. The result carries what code reads off
# a nixpkgs derivation: the arguments, `meta`, `passthru`, `overrideAttrs`, `outPath`.
{ lib, check, accepted, hostPlatform }:

let
  inherit (hostPlatform) system;

  # Not environment variables of the build (mkDerivation removes them too).
  notEnv = [
    "meta"
    "passthru"
    "pos"
    "env"
    "checkInputs"
    "installCheckInputs"
    "__darwinAllowLocalNetworking"
    "__impureHostDeps"
    "__propagatedImpureHostDeps"
    "sandboxProfile"
    "propagatedSandboxProfile"
    "builder"
    "args"
  ];

  inherit (accepted) dependencyLists;

  resolve = argsOrFun: final: if lib.isFunction argsOrFun then argsOrFun final else argsOrFun;

  envValue = v: builtins.isString v || builtins.isBool v || builtins.isInt v || lib.isDerivation v
    || builtins.isPath v;

  # spec:
  #   fn        name used in messages ("buildRustPackage")
  #   accepted  list of argument names, or null for any (runCommand's environment)
  #   validate  args -> args, throwing on what the real function rejects
  #   drop      arguments the function consumes (not environment variables)
  #   env       args -> extra environment (what the real function derives)
  #   passthru  args -> extra attributes of the result
  make = spec: argsOrFun:
    let
      inherit (spec) fn;
      args = lib.fix (self: resolve argsOrFun (self // { finalPackage = result; }));

      named = if spec.accepted == null then args else check.arguments fn spec.accepted args;
      valid = (spec.validate or lib.id) (check.dependencies fn dependencyLists named);

      # What check-meta.nix adds to every package's meta, then the package's own.
      meta = {
        inherit name;
        outputsToInstall = [ "out" ];
        available = true;
        broken = false;
        insecure = false;
        unfree = false;
        unsupported = false;
      } // check.names fn "meta attribute" accepted.meta (args.meta or { });
      name = args.name or (
        if args ? pname && args ? version then "${args.pname}-${args.version}"
        else throw "${fn}: set `name`, or `pname` and `version`"
      );

      env = args.env or { };
      envChecked = check.all fn [
        {
          ok = lib.all envValue (lib.attrValues env);
          message = "The ‘env’ attribute set can only contain derivation, string, boolean or integer attributes.";
        }
        {
          ok = lib.intersectLists (lib.attrNames env) (lib.attrNames args) == [ ];
          message = "The ‘env’ attribute set cannot contain any attributes passed to derivation: ${
            toString (lib.intersectLists (lib.attrNames env) (lib.attrNames args))}";
        }
      ]
        env;

      # What nixpkgs checks when the derivation is instantiated (meta.available).
      validity =
        if meta.broken or false then
          throw "Package ‘${name}’ is marked as broken, refusing to evaluate."
        else if !lib.meta.availableOn hostPlatform { inherit meta; } then
          throw "Package ‘${name}’ is not available on the requested hostPlatform: hostPlatform.system = \"${system}\", package.meta.platforms = ${lib.generators.toPretty { } (meta.platforms or [ ])}"
        else "checked";

      drvAttrs = removeAttrs valid (notEnv ++ spec.drop or [ ]) // envChecked
        // (spec.env or (_: { })) valid // {
        inherit name system;
        builder = "/bin/sh";
        args = [ "-c" "echo 'tests/nix-flake: stand-in for ${name}; nothing to build' >&2; exit 1" ];
        __ignoreNulls = true;
        standIn = validity;
      };

      passthru = (args.passthru or { }) // (spec.passthru or (_: { })) valid;

      result = derivation drvAttrs // passthru // {
        inherit meta passthru;
        overrideAttrs = f: make spec (final:
          let prev = resolve argsOrFun final;
          in prev // lib.toExtension f final prev);
      };
    in
    result;
in
{
  inherit make;

  # A package the flake only refers to (cargo, curl, …): the name and mainProgram.
  leaf = name: mainProgram: make { fn = name; accepted = null; } {
    pname = name;
    version = "stand-in";
    meta = { inherit mainProgram; platforms = lib.platforms.all; };
  };
}
