# Shared by every Relay module: the package set the modules default to, the systemd
# hardening block, and helpers for secrets and build-time configuration checks.
{ config, lib, pkgs, ... }:

let
  inherit (lib) mkOption types;
  settingsFormat = pkgs.formats.toml { };
in
{
  options.services.relay = {
    packages = mkOption {
      type = types.attrsOf types.package;
      default = { };
      description = ''
        Relay packages by binary name (`relay-server`, `relay-identity`, `relay-management`,
        `relay-connector`, `relayctl`). The flake's modules fill this in; each service's
        `package` option defaults to the entry of its binary.
      '';
    };

    lib = mkOption {
      type = types.raw;
      internal = true;
      readOnly = true;
      description = "Helpers shared by the Relay modules.";
    };
  };

  config.services.relay.lib = rec {
    # The package a service runs, unless its `package` option says otherwise.
    defaultPackage = name:
      config.services.relay.packages.${name} or (throw
        "Relay: set the package of ${name} (services.relay.packages.${name} or the service's `package` option).");

    # TOML cannot hold null; typed options use null for "not set".
    toToml = name: settings:
      settingsFormat.generate name (lib.filterAttrsRecursive (_: v: v != null) settings);

    # Where systemd exposes a `LoadCredential=NAME:PATH` file to the service.
    credentialPath = unit: name: "/run/credentials/${unit}.service/${name}";

    # A secret given as a Nix path would be copied into the world-readable store.
    notInStore = option: path: {
      assertion = path == null || !lib.hasPrefix builtins.storeDir (toString path);
      message = "${option} must not be in the Nix store (it is world-readable): ${toString path}";
    };

    # "0.0.0.0:5000" / "[::]:5000" -> 5000.
    portOf = address: lib.toInt (lib.last (lib.splitString ":" address));

    # The generated file, validated by the service's own `check-config` at build time.
    # `env` sets overrides the check needs (e.g. a stand-in for a secret file the check reads).
    checkedConfig = { name, package, binary, settings, env ? { } }:
      pkgs.runCommand "${name}-checked.toml"
        {
          nativeBuildInputs = [ package ];
          config = toToml "${name}.toml" settings;
        } ''
        ${lib.concatStrings (lib.mapAttrsToList (k: v: "export ${k}=${lib.escapeShellArg v}\n") env)}
        echo placeholder > placeholder-secret
        ${binary} check-config --config "$config"
        cp "$config" "$out"
      '';

    # `LimitNOFILE` of a unit serving `listeners` listeners capped by `[connections]`
    # `max_connections` (default 16384): every listener full, plus room for the database,
    # the broker, body files and the metrics listener; never below 65536.
    nofileFor = listeners: settings:
      lib.max 65536 (listeners * ((settings.connections or { }).max_connections or 16384) + 4096);

    # The sandbox every Relay unit runs in (nixos-modules/hardening.nix, shared with the
    # Debian package's unit). Services add ReadWritePaths for anything outside their
    # StateDirectory (the shared body store) and their own User.
    hardening = import ./hardening.nix;

    # Type=notify: the services send READY=1 once listeners are bound and the database
    # (and broker) answer, WATCHDOG=1 while healthy, STOPPING=1 on SIGTERM.
    notify = {
      Type = "notify";
      NotifyAccess = "main";
      WatchdogSec = "30s";
      Restart = "on-failure";
      RestartSec = "5s";
      TimeoutStartSec = "90s";
      TimeoutStopSec = "90s";
      KillSignal = "SIGTERM";
    };
  };
}
