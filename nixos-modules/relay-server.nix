# services.relay.server: the public relay endpoint (one node or several).
{ config, lib, pkgs, ... }:

let
  inherit (lib) mkEnableOption mkIf mkOption optional optionals types;
  cfg = config.services.relay.server;
  relay = config.services.relay.lib;
  unit = "relay-server";
  stateDir = "/var/lib/${unit}";
  amqpUrlFile =
    if cfg.rabbitmq.createLocally then "/var/lib/relay-rabbitmq/amqp-url" else cfg.bus.urlFile;
  bodyPath = cfg.settings.body_store.path;
  db = relay.databaseConfig {
    svc = "server";
    inherit unit;
    inherit (cfg) settings;
    db = cfg.database;
    required = false;
  };

  configFile = relay.toToml "${unit}.toml" cfg.settings;

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

    package = lib.mkPackageOption pkgs "relay-server" { };

    relayctlPackage = lib.mkPackageOption pkgs "relayctl" {
      extraDescription = "Migrates the database before start.";
    };

    checkConfig = relay.checkConfigOption "relay-server";

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Open the ports of `listen.public` and `listen.identity`.";
    };

    database = relay.databaseOptions {
      inherit unit;
      migrate = ''
        Run `relayctl migrate` before each start. Safe on several nodes at once (an
        advisory lock serialises it); turn it off when migrations are run by hand.
      '';
    };

    bus.urlFile = mkOption {
      type = types.nullOr types.externalPath;
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
        /var/lib/relay-rabbitmq) and use it as the bus. The user is created again whenever
        the broker lacks it (a wiped broker), with a new password.
      '';
    };

    settings = mkOption {
      default = { };
      description = ''
        relay-server configuration (docs/configuration.md), written to a TOML file (checked
        with `relay-server check-config`, see `checkConfig`). Secrets belong in the `*File`
        options, never here: this file is in the Nix store.
      '';
      type = types.submodule {
        freeformType = relay.settingsFormat.type;
        options = {
          public_url = mkOption {
            type = types.nullOr types.str;
            default = null;
            example = "http://relay1.internal:5000";
            description = "This node's own base URL (its tunnel endpoint), not the load balancer's.";
          };
          listen.public = relay.listenOption {
            default = "0.0.0.0:5000";
            description = "Relay paths, `/connector`, discovery and health";
          };
          listen.identity = relay.listenOption {
            default = null;
            example = "0.0.0.0:5002";
            description = "Run the token service in this process on this address";
          };
          database.url = relay.databaseUrlOption unit;
          identity.authority = mkOption {
            type = types.str;
            default = "http://127.0.0.1:5002";
            description = "Token authority (relay-identity `public_url`), the same on every node.";
          };
          body_store.path = mkOption {
            type = types.externalPath;
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
    assertions = db.assertions ++ [
      {
        assertion = cfg.settings.bus.kind == "memory" || amqpUrlFile != null || cfg.settings.bus ? url;
        message = "services.relay.server: bus.kind = rabbitmq needs services.relay.server.bus.urlFile, settings.bus.url or rabbitmq.createLocally.";
      }
      {
        # Both modules default to port 5002.
        assertion = cfg.settings.listen.identity == null
          || !(config.services.relay.identity.enable or false)
          || relay.portOf cfg.settings.listen.identity != relay.portOf config.services.relay.identity.settings.listen.public;
        message = "services.relay.server.settings.listen.identity and services.relay.identity.settings.listen.public use the same port on this host; run the token service once (drop listen.identity, or disable services.relay.identity).";
      }
    ] ++ map
      (url: relay.inlineSecret {
        option = "services.relay.server.settings.bus.url";
        fileOption = "services.relay.server.bus.urlFile";
        value = url;
      })
      (lib.toList (cfg.settings.bus.url or [ ]));

    services.relay.server.settings = db.settings // {
      bus.url_file = mkIf (amqpUrlFile != null) (relay.credentialPath unit "amqp-url");
    };

    services.rabbitmq.enable = mkIf cfg.rabbitmq.createLocally true;

    # Creates the vhost and the user whenever the broker lacks them: part of the broker's
    # unit, so it runs again after every broker (re)start.
    systemd.services.relay-rabbitmq-setup = mkIf cfg.rabbitmq.createLocally {
      description = "Relay: RabbitMQ vhost and user";
      wantedBy = [ "rabbitmq.service" ];
      bindsTo = [ "rabbitmq.service" ];
      partOf = [ "rabbitmq.service" ];
      after = [ "rabbitmq.service" ];
      path = [ config.services.rabbitmq.package pkgs.coreutils pkgs.gnugrep pkgs.gnused ];
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
      # Keyed on the broker's user list, not on the file: a wiped broker gets the user back
      # (with the password the relay already has), a changed password is set back.
      script = ''
        url_file=/var/lib/relay-rabbitmq/amqp-url
        if [ -s "$url_file" ]; then
          password="$(sed -E 's#^amqp://relay:([^@]*)@.*#\1#' "$url_file")"
        else
          password="$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
          echo "amqp://relay:$password@127.0.0.1:${toString config.services.rabbitmq.port}/relay" > "$url_file.tmp"
          mv "$url_file.tmp" "$url_file"
        fi
        rabbitmqctl list_vhosts --silent | grep -qx relay || rabbitmqctl add_vhost relay
        if ! rabbitmqctl list_users --silent | cut -f1 | grep -qx relay; then
          rabbitmqctl add_user relay "$password"
        elif ! rabbitmqctl authenticate_user relay "$password" >/dev/null 2>&1; then
          rabbitmqctl change_password relay "$password"
        fi
        rabbitmqctl set_permissions -p relay relay '.*' '.*' '.*'
      '';
    };

    system.checks = relay.configCheck {
      enable = cfg.checkConfig;
      name = unit;
      inherit (cfg) package;
      binary = "relay-server";
      inherit configFile;
    };

    systemd.services.${unit} = {
      description = "Relay server";
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      after = [ "network-online.target" ] ++ db.unit.after
        ++ optional cfg.rabbitmq.createLocally "relay-rabbitmq-setup.service";
      requires = db.unit.requires
        ++ optional cfg.rabbitmq.createLocally "relay-rabbitmq-setup.service";
      unitConfig.RequiresMountsFor = [ bodyPath ];
      serviceConfig = relay.hardening // relay.notify // {
        User = unit;
        ExecStartPre = optional cfg.database.migrate migrate;
        ExecStart = "${lib.getExe cfg.package} --config ${configFile}";
        # The public listener and the token service it may run in process.
        LimitNOFILE = relay.nofileFor 2 cfg.settings;
        StateDirectory = unit;
        StateDirectoryMode = "0700";
        WorkingDirectory = stateDir;
        LoadCredential = db.unit.loadCredential
          ++ optional (amqpUrlFile != null) "amqp-url:${toString amqpUrlFile}";
        ReadWritePaths = optional (!lib.hasPrefix "${stateDir}/" bodyPath) bodyPath;
      };
    };

    networking.firewall.allowedTCPPorts = mkIf cfg.openFirewall
      ([ (relay.portOf cfg.settings.listen.public) ]
        ++ optionals (cfg.settings.listen.identity != null) [ (relay.portOf cfg.settings.listen.identity) ]);
  };
}
