# services.relay.identity: the OAuth2 token service (client credentials, OIDC discovery,
# JWKS, signing-key rotation). Any number of instances may share one database.
{ config, lib, pkgs, ... }:

let
  inherit (lib) mkEnableOption mkIf mkOption optional types;
  cfg = config.services.relay.identity;
  relay = config.services.relay.lib;
  settingsFormat = pkgs.formats.toml { };
  unit = "relay-identity";
  stateDir = "/var/lib/${unit}";

  configFile = relay.checkedConfig {
    name = unit;
    inherit (cfg) package settings;
    binary = "relay-identity";
  };
in
{
  imports = [ ./common.nix ];

  options.services.relay.identity = {
    enable = mkEnableOption "the Relay token service (relay-identity)";

    package = mkOption {
      type = types.package;
      default = relay.defaultPackage "relay-identity";
      defaultText = lib.literalExpression "config.services.relay.packages.relay-identity";
      description = "The relay-identity package.";
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Open the port of `listen.public`.";
    };

    database = {
      urlFile = mkOption {
        type = types.nullOr types.path;
        default = null;
        example = "/run/keys/relay-database-url";
        description = ''
          File holding the database URL (`postgres://relay:PASSWORD@db/relay`), passed with
          `LoadCredential`. Must not be in the Nix store.
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
      migrate = mkOption {
        type = types.bool;
        default = true;
        description = "Start with `--migrate` (apply pending migrations; safe on several instances).";
      };
    };

    settings = mkOption {
      default = { };
      description = ''
        relay-identity configuration (docs/configuration.md), checked with
        `relay-identity check-config` at build time. No secrets here: the file is in the store.
      '';
      type = types.submodule {
        freeformType = settingsFormat.type;
        options = {
          public_url = mkOption {
            type = types.nullOr types.str;
            default = null;
            example = "http://id.internal:5002";
            description = ''
              Issuer and base of the discovery URLs. With several relay nodes it must equal
              their `identity.authority`.
            '';
          };
          listen.public = mkOption {
            type = types.str;
            default = "0.0.0.0:5002";
            description = "Token, discovery, JWKS and health endpoints.";
          };
          database.url = mkOption {
            type = types.nullOr types.str;
            default = null;
            description = ''
              Database URL without a password. Defaults to the local PostgreSQL socket with
              `database.createLocally`, else to a SQLite file in ${stateDir}.
            '';
          };
        };
      };
    };
  };

  config = mkIf cfg.enable {
    assertions = [
      (relay.notInStore "services.relay.identity.database.urlFile" cfg.database.urlFile)
      {
        assertion = cfg.database.urlFile == null || cfg.settings.database.url == null;
        message = "services.relay.identity: set database.urlFile or settings.database.url, not both.";
      }
      {
        assertion = !cfg.database.createLocally || cfg.database.name == cfg.database.user;
        message = "services.relay.identity.database: createLocally needs name == user.";
      }
    ];

    services.relay.identity.settings.database = {
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
      description = "Relay token service";
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      after = [ "network-online.target" ] ++ optional cfg.database.createLocally "postgresql.target";
      requires = optional cfg.database.createLocally "postgresql.target";
      serviceConfig = relay.hardening // relay.notify // {
        ExecStart = "${lib.getExe cfg.package} --config ${configFile}"
          + lib.optionalString cfg.database.migrate " --migrate";
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
