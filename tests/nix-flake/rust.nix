# Stand-in rustPlatform.buildRustPackage: the argument names of nixpkgs 25.11's
# buildRustPackage and its cargo hooks, its own assertions (a source of dependencies,
# buildType), and what importCargoLock does at evaluation time: closed arguments, exactly
# one lock file, the lock file parsed, a hash for every git dependency.
{ lib, check, accepted, make, runCommand }:

let
  fn = "buildRustPackage";

  cargoLock = lock:
    let
      l = check.arguments "${fn}: cargoLock" accepted.cargoLock lock;
      hasFile = (l.lockFile or null) != null;
      hasContents = (l.lockFileContents or null) != null;
      parsed = builtins.fromTOML (if hasFile then builtins.readFile l.lockFile else l.lockFileContents);
      git = lib.filter (p: lib.hasPrefix "git+" (p.source or "")) (parsed.package or [ ]);
      unhashed = lib.filter (p: !((l.outputHashes or { }) ? "${p.name}-${p.version}")) git;
    in
    check.all "${fn}: cargoLock" [{
      ok = hasFile != hasContents;
      message = "set exactly one of `lockFile` and `lockFileContents`";
    }]
      (check.all "${fn}: cargoLock" [{
        ok = (l.allowBuiltinFetchGit or false) || unhashed == [ ];
        message = "No hash was found while vendoring the git dependency ${
          lib.concatMapStringsSep ", " (p: "${p.name}-${p.version}") unhashed}; add it to `outputHashes`";
      }]
        l);

  validate = args:
    let
      lock = if (args.cargoLock or null) != null then cargoLock args.cargoLock else null;
    in
    builtins.seq lock (check.all fn [
      {
        ok = lib.any (n: (args.${n} or null) != null) [ "cargoHash" "cargoVendorDir" "cargoDeps" "cargoLock" ];
        message = "cargoHash, cargoVendorDir, cargoDeps, or cargoLock must be set";
      }
      {
        ok = lib.elem (args.buildType or "release") [ "release" "debug" ];
        message = "buildType must be \"release\" or \"debug\", not ${lib.generators.toPretty { } args.buildType}";
      }
      {
        ok = args ? src || args ? srcs;
        message = "missing argument `src`";
      }
    ]
      args);

  # importCargoLock's vendor directory, with the lock file in the store as nixpkgs puts it.
  vendor = args:
    if (args.cargoLock or null) == null then { }
    else {
      cargoDeps = runCommand "cargo-vendor-dir"
        {
          lockFile =
            if (args.cargoLock.lockFile or null) != null then args.cargoLock.lockFile
            else builtins.toFile "Cargo.lock" args.cargoLock.lockFileContents;
        } "ln -s $lockFile $out";
    };
in
make {
  inherit fn validate;
  accepted = accepted.buildRustPackage;
  drop = [ "cargoLock" "depsExtraArgs" "cargoUpdateHook" "useFetchCargoVendor" ];
  env = args: vendor args // {
    cargoBuildType = args.buildType or "release";
    cargoCheckType = args.checkType or args.buildType or "release";
    doCheck = args.doCheck or true;
  };
}
