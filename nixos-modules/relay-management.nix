# services.relay.management: the management REST API (/management/...), for operators only.
{ config, lib, pkgs, ... }:

let
  inherit (lib) mkEnableOption mkIf mkOption optional types;
  cfg = config.services.relay.management;
  relay = config.services.relay.lib;
  settingsFormat = pkgs.formats.toml { };
  unit = "relay-management";
  stateDir = "/var/lib/${unit}";

  configFile = relay.checkedConfig {
    name = unit;
    inherit (cfg) package settings;
    binary = "relay-management";
  };
in
{
  imports = [ ./common.nix ];

  options.services.relay.management = {
    enable = mkEnableOption "the Relay management API (relay-management)";

    package = mkOption {
      type = types.package;
      default = relay.defaultPackage "relay-management";
      defaultText = lib.literalExpression "config.services.relay.packages.relay-management";
      description = "The relay-management package.";
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Open the port of `listen.public` (operators only: prefer a VPN or a proxy).";
    };

    database = {
      urlFile = mkOption {
        type = types.nullOr types.path;
        default = null;
        example = "/run/keys/relay-database-url";
        description = ''
          File holding the database URL, passed with `LoadCredential`. Must not be in the
          Nix store.
        '';
      };
      createLocally = mkOption {
        type = types.bool;
        default = false;
        description = "Create a local PostgreSQL database and role; connect by peer authentication.";
      };
      name = mkOption {
        type = types.str;
        default = "relay";
        description = "Database name with `createLocally`.";
      };
      user = mkOption {
        type = types.str;
        default = "relay";
        description = "Role with `createLocally`; equals the services' dynamic user `relay`.";
      };
    };

    settings = mkOption {
      default = { };
      description = ''
        relay-management configuration, checked with `relay-management check-config` at
        build time. No secrets here: the file is in the store.
      '';
      type = types.submodule {
        freeformType = settingsFormat.type;
        options = {
          listen.public = mkOption {
            type = types.str;
            default = "127.0.0.1:5004";
            description = "The management API (`/management/...`).";
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
            description = "Token authority whose JWKS checks the operators' bearer tokens.";
          };
        };
      };
    };
  };

  config = mkIf cfg.enable {
    assertions = [
      (relay.notInStore "services.relay.management.database.urlFile" cfg.database.urlFile)
      {
        assertion = cfg.database.urlFile == null || cfg.settings.database.url == null;
        message = "services.relay.management: set database.urlFile or settings.database.url, not both.";
      }
      {
        assertion = !cfg.database.createLocally || cfg.database.name == cfg.database.user;
        message = "services.relay.management.database: createLocally needs name == user.";
      }
    ];

    services.relay.management.settings.database = {
      url = mkIf (cfg.database.urlFile == null) (lib.mkDefault
        (if cfg.database.createLocally
        then "postgres:///${cfg.database.name}?host=/run/postgresql&user=${cfg.database.user}"
        else "sqlite://${stateDir}/relay.db"));
      url_file = mkIf (cfg.database.urlFile != null) (relay.credentialPath unit "database-url");
    };

    services.postgresql = mkIf cfg.database.createLocally {
      enable = true;
      ensureDatabases = [ cfg.database.name ];
      ensureUsers = [{ name = cfg.database.user; ensureDBOwnership = true; }];
    };

    systemd.services.${unit} = {
      description = "Relay management API";
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      after = [ "network-online.target" ] ++ optional cfg.database.createLocally "postgresql.target";
      requires = optional cfg.database.createLocally "postgresql.target";
      serviceConfig = relay.hardening // relay.notify // {
        ExecStart = "${lib.getExe cfg.package} --config ${configFile}";
        LimitNOFILE = relay.nofileFor 1 cfg.settings;
        StateDirectory = unit;
        StateDirectoryMode = "0700";
        WorkingDirectory = stateDir;
        LoadCredential = optional (cfg.database.urlFile != null) "database-url:${toString cfg.database.urlFile}";
      };
    };

    networking.firewall.allowedTCPPorts = mkIf cfg.openFirewall [ (relay.portOf cfg.settings.listen.public) ];
  };
}
