# services.relay.server: the public relay endpoint (one node or several).
{ config, lib, pkgs, ... }:

let
  inherit (lib) mkEnableOption mkIf mkOption optional optionals types;
  cfg = config.services.relay.server;
  relay = config.services.relay.lib;
  settingsFormat = pkgs.formats.toml { };
  unit = "relay-server";
  stateDir = "/var/lib/${unit}";
  localPostgres = "postgres:///${cfg.database.name}?host=/run/postgresql&user=${cfg.database.user}";
  amqpUrlFile =
    if cfg.rabbitmq.createLocally then "/var/lib/relay-rabbitmq/amqp-url" else cfg.bus.urlFile;
  bodyPath = cfg.settings.body_store.path;

  configFile = relay.checkedConfig {
    name = unit;
    inherit (cfg) package settings;
    binary = "relay-server";
  };

  # relay-server does not migrate; relayctl does, serialised across nodes by an advisory lock.
  migrate = pkgs.writeShellScript "relay-server-migrate" ''
    set -eu
    ${if cfg.database.urlFile != null
      then ''RELAY_DATABASE_URL="$(< "$CREDENTIALS_DIRECTORY/database-url")"''
      else "RELAY_DATABASE_URL=${lib.escapeShellArg cfg.settings.database.url}"}
    export RELAY_DATABASE_URL
    exec ${lib.getExe cfg.relayctlPackage} migrate
  '';
in
{
  imports = [ ./common.nix ];

  options.services.relay.server = {
    enable = mkEnableOption "the Relay server (public relay and connector endpoint)";

    package = mkOption {
      type = types.package;
      default = relay.defaultPackage "relay-server";
      defaultText = lib.literalExpression "config.services.relay.packages.relay-server";
      description = "The relay-server package.";
    };

    relayctlPackage = mkOption {
      type = types.package;
      default = relay.defaultPackage "relayctl";
      defaultText = lib.literalExpression "config.services.relay.packages.relayctl";
      description = "The relayctl package, used to migrate the database before start.";
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Open the ports of `listen.public` and `listen.identity`.";
    };

    database = {
      urlFile = mkOption {
        type = types.nullOr types.path;
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
          socket with peer authentication (no password).
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
          Role with `createLocally`. Peer authentication maps the service's (dynamic) user to
          it, so it must equal the unit's `User` (`relay` for every Relay service).
        '';
      };
      migrate = mkOption {
        type = types.bool;
        default = true;
        description = ''
          Run `relayctl migrate` before each start. Safe on several nodes at once (an
          advisory lock serialises it); turn it off when migrations are run by hand.
        '';
      };
    };

    bus.urlFile = mkOption {
      type = types.nullOr types.path;
      default = null;
      example = "/run/keys/relay-amqp-url";
      description = ''
        File with the broker URL(s), one per line (`amqp://relay:PASSWORD@mq:5672/relay`),
        for `settings.bus.kind = "rabbitmq"`. Passed with `LoadCredential`.
      '';
    };

    rabbitmq.createLocally = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Run RabbitMQ on this host with a vhost and user `relay` (random password, kept in
        /var/lib/relay-rabbitmq) and use it as the bus.
      '';
    };

    settings = mkOption {
      default = { };
      description = ''
        relay-server configuration (docs/configuration.md), written to a TOML file checked
        with `relay-server check-config` at build time. Secrets belong in the `*File`
        options, never here: this file is in the Nix store.
      '';
      type = types.submodule {
        freeformType = settingsFormat.type;
        options = {
          public_url = mkOption {
            type = types.nullOr types.str;
            default = null;
            example = "http://relay1.internal:5000";
            description = "This node's own base URL (its tunnel endpoint), not the load balancer's.";
          };
          listen.public = mkOption {
            type = types.str;
            default = "0.0.0.0:5000";
            description = "Relay paths, `/connector`, discovery and health.";
          };
          listen.identity = mkOption {
            type = types.nullOr types.str;
            default = null;
            example = "0.0.0.0:5002";
            description = "Run the token service in this process on this address.";
          };
          database.url = mkOption {
            type = types.nullOr types.str;
            default = null;
            description = ''
              Database URL without a password. Defaults to the local PostgreSQL socket with
              `database.createLocally`, else to a SQLite file in ${stateDir}.
            '';
          };
          identity.authority = mkOption {
            type = types.str;
            default = "http://127.0.0.1:5002";
            description = "Token authority (relay-identity `public_url`), the same on every node.";
          };
          body_store.path = mkOption {
            type = types.str;
            default = "${stateDir}/bodies";
            example = "/srv/relay/bodies";
            description = ''
              Body directory. With several nodes it must be one directory shared by all of
              them (NFS), mounted at the same path; the unit waits for its mount.
            '';
          };
          bus.kind = mkOption {
            type = types.enum [ "memory" "rabbitmq" ];
            default = if cfg.rabbitmq.createLocally then "rabbitmq" else "memory";
            defaultText = lib.literalExpression ''if rabbitmq.createLocally then "rabbitmq" else "memory"'';
            description = "`memory` for one node, `rabbitmq` for several.";
          };
        };
      };
    };
  };

  config = mkIf cfg.enable {
    assertions = [
      (relay.notInStore "services.relay.server.database.urlFile" cfg.database.urlFile)
      (relay.notInStore "services.relay.server.bus.urlFile" cfg.bus.urlFile)
      {
        assertion = cfg.database.urlFile == null || cfg.settings.database.url == null;
        message = "services.relay.server: set database.urlFile or settings.database.url, not both.";
      }
      {
        assertion = cfg.settings.bus.kind == "memory" || amqpUrlFile != null || cfg.settings.bus ? url;
        message = "services.relay.server: bus.kind = rabbitmq needs bus.urlFile, settings.bus.url or rabbitmq.createLocally.";
      }
      {
        assertion = !cfg.database.createLocally || cfg.database.name == cfg.database.user;
        message = "services.relay.server.database: createLocally needs name == user (the role owns the database).";
      }
    ];

    services.relay.server.settings = {
      database.url = mkIf (cfg.database.urlFile == null) (lib.mkDefault
        (if cfg.database.createLocally then localPostgres else "sqlite://${stateDir}/relay.db"));
      database.url_file = mkIf (cfg.database.urlFile != null) (relay.credentialPath unit "database-url");
      bus.url_file = mkIf (amqpUrlFile != null) (relay.credentialPath unit "amqp-url");
    };

    services.postgresql = mkIf cfg.database.createLocally {
      enable = true;
      ensureDatabases = [ cfg.database.name ];
      ensureUsers = [{ name = cfg.database.user; ensureDBOwnership = true; }];
    };

    services.rabbitmq.enable = mkIf cfg.rabbitmq.createLocally true;

    systemd.services.relay-rabbitmq-setup = mkIf cfg.rabbitmq.createLocally {
      description = "Relay: RabbitMQ vhost and user";
      requires = [ "rabbitmq.service" ];
      after = [ "rabbitmq.service" ];
      path = [ config.services.rabbitmq.package pkgs.coreutils pkgs.gnugrep ];
      environment.HOME = config.services.rabbitmq.dataDir;
      serviceConfig = {
        Type = "oneshot";
        RemainAfterExit = true;
        User = "rabbitmq";
        Group = "rabbitmq";
        StateDirectory = "relay-rabbitmq";
        StateDirectoryMode = "0700";
        UMask = "0077";
      };
      script = ''
        url_file=/var/lib/relay-rabbitmq/amqp-url
        rabbitmqctl list_vhosts --silent | grep -qx relay || rabbitmqctl add_vhost relay
        if [ ! -s "$url_file" ]; then
          password="$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
          rabbitmqctl delete_user relay >/dev/null 2>&1 || true
          rabbitmqctl add_user relay "$password"
          rabbitmqctl set_permissions -p relay relay '.*' '.*' '.*'
          echo "amqp://relay:$password@127.0.0.1:${toString config.services.rabbitmq.port}/relay" > "$url_file.tmp"
          mv "$url_file.tmp" "$url_file"
        fi
      '';
    };

    systemd.services.${unit} = {
      description = "Relay server";
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      after = [ "network-online.target" ]
        ++ optional cfg.database.createLocally "postgresql.target"
        ++ optional cfg.rabbitmq.createLocally "relay-rabbitmq-setup.service";
      requires = optional cfg.database.createLocally "postgresql.target"
        ++ optional cfg.rabbitmq.createLocally "relay-rabbitmq-setup.service";
      unitConfig.RequiresMountsFor = [ bodyPath ];
      serviceConfig = relay.hardening // relay.notify // {
        ExecStartPre = optional cfg.database.migrate migrate;
        ExecStart = "${lib.getExe cfg.package} --config ${configFile}";
        # The public listener and the token service it may run in process.
        LimitNOFILE = relay.nofileFor 2 cfg.settings;
        StateDirectory = unit;
        StateDirectoryMode = "0700";
        WorkingDirectory = stateDir;
        LoadCredential =
          optional (cfg.database.urlFile != null) "database-url:${toString cfg.database.urlFile}"
            ++ optional (amqpUrlFile != null) "amqp-url:${toString amqpUrlFile}";
        ReadWritePaths = optional (!lib.hasPrefix "${stateDir}/" bodyPath) bodyPath;
      };
    };

    networking.firewall.allowedTCPPorts = mkIf cfg.openFirewall
      ([ (relay.portOf cfg.settings.listen.public) ]
        ++ optionals (cfg.settings.listen.identity != null) [ (relay.portOf cfg.settings.listen.identity) ]);
  };
}
