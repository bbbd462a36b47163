# Evaluates one host configuration as NixOS would, against the stubs: failed assertions
# throw with their messages (as system.build.toplevel does), every enabled service is
# rendered to its unit file text, and the result holds what the run checks and prints.
# `problems` lists what is wrong beyond evaluation: a Requires=/BindsTo= on a unit nobody
# provides, a Relay unit without its own DynamicUser, and anything a case's `expect`
# contradicts.
{ lib }:

let
  render = import ./render.nix { inherit lib; };

  # Relay's own units, each with a user of its own (not the broker setup, which runs as
  # the broker's user).
  isRelayUnit = name: lib.hasPrefix "relay-" name && name != "relay-rabbitmq-setup";
in
{ modules
, specialArgs ? { }
, pkgs ? { }
, expect ? { }
}:
let
  evaluated = lib.evalModules {
    class = "nixos";
    inherit specialArgs;
    modules = [
      ./stubs/nixos.nix
      { _module.args.pkgs = import ./stubs/pkgs.nix ({ inherit lib; } // pkgs); }
    ] ++ modules;
  };
  cfg = evaluated.config;

  failed = map (a: a.message) (lib.filter (a: !a.assertion) cfg.assertions);

  services = lib.filterAttrs (_: s: s.enable) cfg.systemd.services;
  units = lib.mapAttrs' (_: s: lib.nameValuePair s.name (render cfg.systemd.globalEnvironment s)) services;
  known = builtins.attrNames units ++ cfg.systemd.providedUnits;

  referenced = lib.unique (lib.concatMap
    (s: s.requires ++ s.wants ++ s.after ++ s.before ++ s.bindsTo ++ s.partOf ++ s.requisite ++ s.wantedBy)
    (builtins.attrValues services));

  dangling = lib.concatLists (lib.mapAttrsToList
    (name: s: map (dep: "${name}.service needs ${dep}, which no module of this host provides")
      (lib.filter (dep: !(lib.elem dep known)) (s.requires ++ s.bindsTo ++ s.requisite)))
    services);

  relayServices = lib.filterAttrs (name: _: isRelayUnit name) services;
  userOf = s: s.serviceConfig.User or null;
  ownUsers = lib.concatLists (lib.mapAttrsToList
    (name: s:
      lib.optional (userOf s != name) "${name}.service runs as User=${toString (userOf s)}, not its own user ${name}"
      ++ lib.optional ((s.serviceConfig.DynamicUser or false) != true) "${name}.service has no DynamicUser=true")
    relayServices);

  # The configuration file each Relay unit is started with, rebuilt from its settings
  # option with the module's own toToml and kept only if it is the very file the unit names
  # (same store path): ./run gives it to the binary's check-config when one is built.
  relay = cfg.services.relay.lib;
  configFiles = lib.filterAttrs (_: c: c != null) (lib.mapAttrs
    (name: s:
      let
        connector = lib.removePrefix "relay-connector-" name;
        isConnector = connector != name;
        settings =
          if isConnector
          then cfg.services.relay.connector.instances.${connector}.settings
            // { secret_file = relay.credentialPath name "secret"; }
          else cfg.services.relay.${lib.removePrefix "relay-" name}.settings;
        file = relay.toToml "${name}.toml" settings;
      in
      if lib.hasInfix (builtins.unsafeDiscardStringContext file.outPath)
        (builtins.unsafeDiscardStringContext (toString (s.serviceConfig.ExecStart or "")))
      then {
        binary = if isConnector then "relay-connector" else name;
        toml = file.tomlValue;
      }
      else null)
    relayServices);

  checks = map (d: d.name) cfg.system.checks;
  tcpPorts = cfg.networking.firewall.allowedTCPPorts;

  expected = what: want: got:
    lib.optional (expect ? ${what} && want != got)
      "expected ${what} ${builtins.toJSON want}, got ${builtins.toJSON got}";
  expectations =
    expected "units" (lib.sort lib.lessThan (expect.units or [ ])) (builtins.attrNames units)
    ++ expected "checks" (expect.checks or 0) (builtins.length checks)
    ++ expected "tcpPorts" (lib.sort lib.lessThan (expect.tcpPorts or [ ])) (lib.sort lib.lessThan tcpPorts)
    ++ expected "overlays" (expect.overlays or 0) (builtins.length cfg.nixpkgs.overlays)
    ++ expected "postgresql" (expect.postgresql or false) cfg.services.postgresql.enable
    ++ lib.concatMap
      (needle: lib.optional (!(lib.hasInfix needle (lib.concatStrings (builtins.attrValues units))))
        "expected the units to contain ${builtins.toJSON needle}")
      (expect.unitsContain or [ ]);
in
if failed != [ ]
then throw "\nFailed assertions:\n${lib.concatMapStringsSep "\n" (m: "- ${m}") failed}"
else {
  inherit units checks tcpPorts referenced configFiles;
  inherit (cfg) warnings;
  provided = cfg.systemd.providedUnits;
  problems = dangling ++ ownUsers ++ expectations;
  # Forced so that a type error in them fails the case, and shown with --verbose.
  host = {
    packages = map (p: p.name) cfg.environment.systemPackages;
    overlays = builtins.length cfg.nixpkgs.overlays;
    postgresql = {
      inherit (cfg.services.postgresql) enable ensureDatabases identMap authentication;
      ensureUsers = map (u: { inherit (u) name ensureDBOwnership; }) cfg.services.postgresql.ensureUsers;
    };
    rabbitmq = { inherit (cfg.services.rabbitmq) enable port dataDir; };
    fileSystems = lib.mapAttrs (_: f: { inherit (f) device fsType options; }) cfg.fileSystems;
    tmpfiles = cfg.systemd.tmpfiles.rules;
    udpPorts = cfg.networking.firewall.allowedUDPPorts;
  };
}
