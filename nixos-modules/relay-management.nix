# services.relay.management: the management REST API (/management/...), for operators only.
{ config, lib, pkgs, ... }:

let
  inherit (lib) mkEnableOption mkIf mkOption types;
  cfg = config.services.relay.management;
  relay = config.services.relay.lib;
  unit = "relay-management";
  db = relay.databaseConfig {
    svc = "management";
    inherit unit;
    inherit (cfg) settings;
    db = cfg.database;
    required = true;
  };
  configFile = relay.toToml "${unit}.toml" cfg.settings;
in
{
  imports = [ ./common.nix ];

  options.services.relay.management = {
    enable = mkEnableOption "the Relay management API (relay-management)";

    package = lib.mkPackageOption pkgs "relay-management" { };

    checkConfig = relay.checkConfigOption "relay-management";

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Open the port of `listen.public` (operators only: prefer a VPN or a proxy).";
    };

    # No `migrate`: relay-server (relayctl) or relay-identity migrates the shared database.
    database = relay.databaseOptions { inherit unit; };

    settings = mkOption {
      default = { };
      description = ''
        relay-management configuration, written to a TOML file (checked with
        `relay-management check-config`, see `checkConfig`). No secrets here: the file is in
        the Nix store.
      '';
      type = types.submodule {
        freeformType = relay.settingsFormat.type;
        options = {
          listen.public = relay.listenOption {
            default = "127.0.0.1:5004";
            description = "The management API (`/management/...`)";
          };
          database.url = relay.databaseUrlOption unit;
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
    assertions = db.assertions;

    services.relay.management.settings = db.settings;

    system.checks = relay.configCheck {
      enable = cfg.checkConfig;
      name = unit;
      inherit (cfg) package;
      binary = "relay-management";
      inherit configFile;
    };

    systemd.services.${unit} = {
      description = "Relay management API";
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      after = [ "network-online.target" ] ++ db.unit.after;
      inherit (db.unit) requires;
      serviceConfig = relay.hardening // relay.notify // {
        User = unit;
        ExecStart = "${lib.getExe cfg.package} --config ${configFile}";
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
