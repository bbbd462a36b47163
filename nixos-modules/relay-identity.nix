# services.relay.identity: the OAuth2 token service (client credentials, OIDC discovery,
# JWKS, signing-key rotation). Any number of instances may share one database.
{ config, lib, pkgs, ... }:

let
  inherit (lib) mkEnableOption mkIf mkOption types;
  cfg = config.services.relay.identity;
  relay = config.services.relay.lib;
  unit = "relay-identity";
  db = relay.databaseConfig {
    svc = "identity";
    inherit unit;
    inherit (cfg) settings;
    db = cfg.database;
    required = true;
  };
  configFile = relay.toToml "${unit}.toml" cfg.settings;
in
{
  imports = [ ./common.nix ];

  options.services.relay.identity = {
    enable = mkEnableOption "the Relay token service (relay-identity)";

    package = lib.mkPackageOption pkgs "relay-identity" { };

    checkConfig = relay.checkConfigOption "relay-identity";

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Open the port of `listen.public`.";
    };

    database = relay.databaseOptions {
      inherit unit;
      migrate = "Start with `--migrate` (apply pending migrations; safe on several instances).";
    };

    settings = mkOption {
      default = { };
      description = ''
        relay-identity configuration (docs/configuration.md), written to a TOML file (checked
        with `relay-identity check-config`, see `checkConfig`). No secrets here: the file is
        in the Nix store.
      '';
      type = types.submodule {
        freeformType = relay.settingsFormat.type;
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
          listen.public = relay.listenOption {
            default = "0.0.0.0:5002";
            description = "Token, discovery, JWKS and health endpoints";
          };
          database.url = relay.databaseUrlOption unit;
        };
      };
    };
  };

  config = mkIf cfg.enable {
    assertions = db.assertions;

    services.relay.identity.settings = db.settings;

    system.checks = relay.configCheck {
      enable = cfg.checkConfig;
      name = unit;
      inherit (cfg) package;
      binary = "relay-identity";
      inherit configFile;
    };

    systemd.services.${unit} = {
      description = "Relay token service";
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      after = [ "network-online.target" ] ++ db.unit.after;
      inherit (db.unit) requires;
      serviceConfig = relay.hardening // relay.notify // {
        User = unit;
        ExecStart = "${lib.getExe cfg.package} --config ${configFile}"
          + lib.optionalString cfg.database.migrate " --migrate";
        LimitNOFILE = relay.nofileFor 1 cfg.settings;
        StateDirectory = unit;
        StateDirectoryMode = "0700";
        WorkingDirectory = "/var/lib/${unit}";
        LoadCredential = db.unit.loadCredential;
      };
    };

    networking.firewall.allowedTCPPorts = mkIf cfg.openFirewall [ (relay.portOf cfg.settings.listen.public) ];
  };
}
