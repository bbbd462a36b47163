# services.relay.connector: the on-premises agent. Each instance is one unit
# relay-connector-<name>, so one host can serve several tenants or relays.
{ config, lib, pkgs, ... }:

let
  inherit (lib) mkOption types;
  cfg = config.services.relay.connector;
  relay = config.services.relay.lib;
  enabled = lib.filterAttrs (_: i: i.enable) cfg.instances;
  unitOf = name: "relay-connector-${name}";
  configFileOf = name:
    let unit = unitOf name;
    in relay.toToml "${unit}.toml"
      (cfg.instances.${name}.settings // { secret_file = relay.credentialPath unit "secret"; });

  instanceModule = { name, ... }: {
    options = {
      enable = mkOption {
        type = types.bool;
        default = true;
        description = "Run this connector instance.";
      };

      secretFile = mkOption {
        type = types.externalPath;
        example = "/run/keys/relay-acme.secret";
        description = ''
          File with the tenant's client secret (`relayctl secret create TENANT`), passed with
          `LoadCredential`. Must not be in the Nix store.
        '';
      };

      settings = mkOption {
        default = { };
        description = ''
          relay-connector configuration (docs/configuration.md), written to a TOML file in
          the Nix store (checked with `relay-connector check-config`, see `checkConfig`).
          `secret_file` is set by the module; the secret itself belongs in `secretFile`.
        '';
        type = types.submodule {
          freeformType = relay.settingsFormat.type;
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
                freeformType = relay.settingsFormat.type;
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
    package = lib.mkPackageOption pkgs "relay-connector" { };

    checkConfig = relay.checkConfigOption "relay-connector";

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
      description = ''
        Connector instances; each becomes the unit `relay-connector-<name>`, running as its
        own dynamic user of that name. A name is 1-15 letters, digits, `_` or `-`.
      '';
    };
  };

  config = lib.mkIf (enabled != { }) {
    assertions = lib.concatLists (lib.mapAttrsToList
      (name: i:
        let option = "services.relay.connector.instances.${name}";
        in [
          {
            # The unit's dynamic user is named after it, and systemd takes only user names
            # of at most 31 characters of letters, digits, '_' and '-'.
            assertion = builtins.match "[A-Za-z0-9_-]{1,15}" name != null;
            message = "${option}: the instance name `${name}` must be 1-15 letters, digits, '_' or '-' (it names the unit and its dynamic user `${unitOf name}`, which systemd limits to 31 characters); the tenant may be longer, set it in ${option}.settings.tenant.";
          }
          {
            assertion = !(i.settings ? secret);
            message = "${option}.settings.secret would put the secret into the world-readable Nix store; put it in a file and set ${option}.secretFile.";
          }
          (relay.inlineSecret {
            option = "${option}.settings.proxy";
            fileOption = "the proxy's environment (HTTPS_PROXY in systemd.services.${unitOf name}.serviceConfig.EnvironmentFile)";
            value = i.settings.proxy or null;
          })
        ])
      enabled);

    system.checks = lib.concatLists (lib.mapAttrsToList
      (name: _: relay.configCheck {
        enable = cfg.checkConfig;
        name = unitOf name;
        inherit (cfg) package;
        binary = "relay-connector";
        configFile = configFileOf name;
        # check-config reads the secret; the real one only exists at run time.
        env.RELAY_CONNECTOR__SECRET_FILE = "placeholder-secret";
      })
      enabled);

    systemd.services = lib.mapAttrs'
      (name: instance:
        let unit = unitOf name;
        in
        lib.nameValuePair unit {
          description = "Relay connector ${name} (tenant ${instance.settings.tenant})";
          wantedBy = [ "multi-user.target" ];
          wants = [ "network-online.target" ];
          after = [ "network-online.target" ];
          # A connector keeps trying for as long as the host runs.
          startLimitIntervalSec = 0;
          serviceConfig = relay.hardening // relay.notify // {
            # Each instance its own user: one tenant's connector cannot read another's secret.
            User = unit;
            ExecStart = "${lib.getExe cfg.package} --config ${configFileOf name}";
            Restart = "always";
            # Ready as soon as the configuration is loaded; tunnels come up in the background.
            TimeoutStartSec = "30s";
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
