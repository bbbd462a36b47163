# Shared by every Relay module: option types, the database options of the three services
# that use one, the systemd hardening block, and helpers for secrets and configuration
# checks. Packages come from the host's `pkgs` (the flake's `overlays.default` adds them).
{ config, lib, pkgs, ... }:

let
  inherit (lib) mkOption optional types;
  settingsFormat = pkgs.formats.toml { };

  # Peer authentication maps each service's own (dynamic) OS user to the database role.
  identMapName = "relay";

  # "host:port", "[v6]:port"; the port is what the firewall options need.
  listenAddress = types.addCheck (types.strMatching "([^]:[]+|\\[[0-9A-Fa-f:.]+]):[0-9]{1,5}")
    (address: lib.toInt (lib.last (lib.splitString ":" address)) <= 65535) // {
    description = "listen address `host:port` (`0.0.0.0:5000`, `[::]:5000`, port at most 65535)";
  };

  # A URL with a password in it: `scheme://user:password@host…` (the password may hold
  # `/`, the last `@` ends it) or a `password=` query parameter (libpq style).
  hasPassword = url: builtins.isString url && (
    builtins.match "[A-Za-z][A-Za-z0-9+.-]*://[^@]*:[^@]*@.*" url != null
      || builtins.match ".*[?&]password=.*" url != null
  );

  # The services on this host whose database `createLocally` is on (one database for all).
  # Only the modules this host imports are looked at.
  localDatabases = lib.filter ({ svc, ... }: svc.enable && svc.database.createLocally)
    (lib.concatMap
      (name: lib.optional (config.services.relay ? ${name})
        { unit = "relay-${name}"; svc = config.services.relay.${name}; })
      [ "server" "identity" "management" ]);
  localRoles = lib.unique (map ({ svc, ... }: { inherit (svc.database) name user; }) localDatabases);
in
{
  options.services.relay.lib = mkOption {
    type = types.raw;
    internal = true;
    readOnly = true;
    description = "Helpers shared by the Relay modules.";
  };

  # PostgreSQL for every service with `database.createLocally`, once however many there are.
  config.services.postgresql = lib.mkIf (localDatabases != [ ]) {
    enable = true;
    ensureDatabases = lib.unique (map (r: r.name) localRoles);
    ensureUsers = map (r: { name = r.user; ensureDBOwnership = true; }) localRoles;
    identMap = lib.concatMapStrings (line: line + "\n") (lib.unique (lib.concatMap
      ({ unit, svc }: [ "${identMapName} ${unit} ${svc.database.user}" "${identMapName} root ${svc.database.user}" ])
      localDatabases));
    # Before the default `local all all peer`: the first matching line wins.
    authentication = lib.mkBefore (lib.concatMapStrings
      (r: "local ${r.name} ${r.user} peer map=${identMapName}\n")
      localRoles);
  };

  config.services.relay.lib = rec {
    inherit settingsFormat;

    # A listener option: "0.0.0.0:5000", "[::]:5000".
    listenOption = { default, description, example ? null }: mkOption ({
      type = if default == null then types.nullOr listenAddress else listenAddress;
      inherit default;
      description = "${description} (`host:port`).";
    } // lib.optionalAttrs (example != null) { inherit example; });

    # "0.0.0.0:5000" / "[::]:5000" -> 5000.
    portOf = address: lib.toInt (lib.last (lib.splitString ":" address));

    # TOML cannot hold null; typed options use null for "not set".
    toToml = name: settings:
      settingsFormat.generate name (lib.filterAttrsRecursive (_: v: v != null) settings);

    # Where systemd exposes a `LoadCredential=NAME:PATH` file to the service.
    credentialPath = unit: name: "/run/credentials/${unit}.service/${name}";

    checkConfigOption = binary: mkOption {
      type = types.bool;
      default = true;
      description = ''
        Check the generated configuration with `${binary} check-config` when the system is
        built (a derivation in `system.checks`; skipped when cross-compiling).
      '';
    };

    # `system.checks` entry: the service's own `check-config` on the generated file. `env`
    # sets overrides the check needs (a stand-in for a secret file that only exists at run
    # time). Nothing when the check is off or the build platform cannot run the binary.
    configCheck = { enable, name, package, binary, configFile, env ? { } }:
      optional (enable && pkgs.stdenv.buildPlatform.canExecute pkgs.stdenv.hostPlatform)
        (pkgs.runCommand "${name}-config-check" { nativeBuildInputs = [ package ]; } ''
          ${lib.concatStrings (lib.mapAttrsToList (k: v: "export ${k}=${lib.escapeShellArg v}\n") env)}
          echo placeholder > placeholder-secret
          ${binary} check-config --config ${configFile}
          touch "$out"
        '');

    # A secret put straight into the (world-readable) Nix store by way of the settings.
    inlineSecret = { option, fileOption, value }: {
      assertion = !(hasPassword value);
      message = "${option} holds a password, and the generated configuration is world-readable in the Nix store; put the URL in a file and set ${fileOption}.";
    };

    # `database.*` options of relay-server, relay-identity and relay-management.
    databaseOptions = { unit, migrate ? null }: {
      urlFile = mkOption {
        type = types.nullOr types.externalPath;
        default = null;
        example = "/run/keys/relay-database-url";
        description = ''
          File holding the database URL (`postgres://relay:PASSWORD@db/relay`). Passed with
          `LoadCredential`, so it may be readable by root only. Must not be in the Nix store.
        '';
      };
      createLocally = mkOption {
        type = types.bool;
        default = false;
        description = ''
          Create a PostgreSQL database and role on this host and connect over the unix
          socket with peer authentication (no password). Every Relay service on the host
          with `createLocally` shares the one database; each runs as its own user, mapped to
          the role by `services.postgresql.identMap` (map `${identMapName}`).
        '';
      };
      name = mkOption {
        type = types.str;
        default = "relay";
        description = "Database name with `createLocally`.";
      };
      user = mkOption {
        type = types.str;
        default = "relay";
        description = ''
          Database role with `createLocally` (it owns the database, so it must equal `name`).
          The service's OS user `${unit}` is mapped to it.
        '';
      };
    } // lib.optionalAttrs (migrate != null) {
      migrate = mkOption {
        type = types.bool;
        default = true;
        description = migrate;
      };
    };

    # `settings.database.url` of the same three services.
    databaseUrlOption = unit: mkOption {
      type = types.nullOr types.str;
      default = null;
      description = ''
        Database URL without a password (a password belongs in `database.urlFile`).
        Defaults to the local PostgreSQL socket with `database.createLocally`, else to a
        SQLite file in /var/lib/${unit}.
      '';
    };

    # What the database options set: the settings' URL, the credential, PostgreSQL, and the
    # assertions. `db` is the service's `database` option set.
    databaseConfig = { svc, unit, db, settings, required }:
      let
        option = "services.relay.${svc}";
        ownSqlite = "sqlite:///var/lib/${unit}/relay.db";
        # The URL defaults to the service's own SQLite file, which no other service can read.
        configured = db.createLocally || db.urlFile != null || settings.database.url != ownSqlite;
      in
      {
        assertions = [
          {
            assertion = db.urlFile == null || settings.database.url == null;
            message = "${option}: set ${option}.database.urlFile or ${option}.settings.database.url, not both.";
          }
          {
            assertion = !db.createLocally || db.name == db.user;
            message = "${option}.database.createLocally needs ${option}.database.name == ${option}.database.user (the role owns the database).";
          }
          {
            assertion = !required || configured;
            message = "${option} needs the configuration database the relay servers use: set ${option}.database.createLocally (on the relay server's host), ${option}.database.urlFile or ${option}.settings.database.url. Its own SQLite file would hold no tenants.";
          }
          (inlineSecret {
            option = "${option}.settings.database.url";
            fileOption = "${option}.database.urlFile";
            value = settings.database.url;
          })
        ];

        settings.database = {
          url = lib.mkIf (db.urlFile == null) (lib.mkDefault
            (if db.createLocally
            then "postgres:///${db.name}?host=/run/postgresql&user=${db.user}"
            else ownSqlite));
          url_file = lib.mkIf (db.urlFile != null) (credentialPath unit "database-url");
        };

        unit = {
          after = optional db.createLocally "postgresql.target";
          requires = optional db.createLocally "postgresql.target";
          loadCredential = optional (db.urlFile != null) "database-url:${toString db.urlFile}";
        };
      };

    # `LimitNOFILE` of a unit serving `listeners` listeners capped by `[connections]`
    # `max_connections` (default 16384): every listener full, plus room for the database,
    # the broker, body files and the metrics listener; never below 65536.
    nofileFor = listeners: settings:
      lib.max 65536 (listeners * ((settings.connections or { }).max_connections or 16384) + 4096);

    # The sandbox every Relay unit runs in (nixos-modules/hardening.nix, shared with the
    # Debian package's unit). Each service adds its own `User` (its unit name, so no two
    # services share a user) and ReadWritePaths for anything outside its StateDirectory.
    hardening = import ./hardening.nix;

    # Type=notify: the services send READY=1 once listeners are bound and the database
    # (and broker) answer (the connector: once its configuration is loaded), WATCHDOG=1
    # while healthy, STOPPING=1 on SIGTERM.
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
