# services.relay.connector: the on-premises agent. Each instance is one unit
# relay-connector-<name>, so one host can serve several tenants or relays.
{ config, lib, pkgs, ... }:

let
  inherit (lib) mkOption types;
  cfg = config.services.relay.connector;
  relay = config.services.relay.lib;
  settingsFormat = pkgs.formats.toml { };
  enabled = lib.filterAttrs (_: i: i.enable) cfg.instances;
  unitOf = name: "relay-connector-${name}";

  instanceModule = { name, ... }: {
    options = {
      enable = mkOption {
        type = types.bool;
        default = true;
        description = "Run this connector instance.";
      };

      secretFile = mkOption {
        type = types.path;
        example = "/run/keys/relay-acme.secret";
        description = ''
          File with the tenant's client secret (`relayctl secret create TENANT`), passed with
          `LoadCredential`. Must not be in the Nix store.
        '';
      };

      settings = mkOption {
        default = { };
        description = ''
          relay-connector configuration (docs/configuration.md), checked with
          `relay-connector check-config` at build time. `secret_file` is set by the module.
        '';
        type = types.submodule {
          freeformType = settingsFormat.type;
          options = {
            relay_url = mkOption {
              type = types.either types.str (types.nonEmptyListOf types.str);
              example = [ "http://relay1.example.com:5000" "http://relay2.example.com:5000" ];
              description = "Relay base URL(s); one tunnel to each.";
            };
            tenant = mkOption {
              type = types.str;
              default = name;
              defaultText = lib.literalExpression "<name>";
              description = "Tenant name (the OAuth2 client_id).";
            };
            targets = mkOption {
              type = types.attrsOf (types.submodule {
                freeformType = settingsFormat.type;
                options.url = mkOption {
                  type = types.str;
                  example = "http://127.0.0.1:8080";
                  description = "Base URL of the target inside the private network.";
                };
              });
              default = { };
              description = "Targets reachable as `/relay/<tenant>/<target>/...`.";
            };
          };
        };
      };
    };
  };
in
{
  imports = [ ./common.nix ];

  options.services.relay.connector = {
    package = mkOption {
      type = types.package;
      default = relay.defaultPackage "relay-connector";
      defaultText = lib.literalExpression "config.services.relay.packages.relay-connector";
      description = "The relay-connector package.";
    };

    instances = mkOption {
      type = types.attrsOf (types.submodule instanceModule);
      default = { };
      example = lib.literalExpression ''
        {
          acme = {
            secretFile = "/run/keys/relay-acme.secret";
            settings = {
              relay_url = [ "http://relay1.example.com:5000" "http://relay2.example.com:5000" ];
              targets.web.url = "http://127.0.0.1:8080";
            };
          };
        }
      '';
      description = "Connector instances; each becomes the unit `relay-connector-<name>`.";
    };
  };

  config = lib.mkIf (enabled != { }) {
    assertions = lib.mapAttrsToList
      (name: i: relay.notInStore "services.relay.connector.instances.${name}.secretFile" i.secretFile)
      enabled;

    systemd.services = lib.mapAttrs'
      (name: instance:
        let
          unit = unitOf name;
          configFile = relay.checkedConfig {
            name = unit;
            inherit (cfg) package;
            binary = "relay-connector";
            settings = instance.settings // { secret_file = relay.credentialPath unit "secret"; };
            # check-config reads the secret; the real one only exists at run time.
            env.RELAY_CONNECTOR__SECRET_FILE = "placeholder-secret";
          };
        in
        lib.nameValuePair unit {
          description = "Relay connector ${name} (tenant ${instance.settings.tenant})";
          wantedBy = [ "multi-user.target" ];
          wants = [ "network-online.target" ];
          after = [ "network-online.target" ];
          # A connector keeps trying for as long as the host runs.
          startLimitIntervalSec = 0;
          serviceConfig = relay.hardening // relay.notify // {
            ExecStart = "${lib.getExe cfg.package} --config ${configFile}";
            Restart = "always";
            # Requests to targets in flight, each with a connection.
            LimitNOFILE = 65536;
            StateDirectory = unit;
            StateDirectoryMode = "0700";
            WorkingDirectory = "/var/lib/${unit}";
            LoadCredential = [ "secret:${toString instance.secretFile}" ];
          };
        })
      enabled;
  };
}
