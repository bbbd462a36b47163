# The host configurations that must evaluate: each module alone (as its file, and through
# nixos-modules/default.nix), every module on one host (as separate files and as the
# flake's modules), connectors with several instances, the switches that change what is
# built, and each ```nix example of docs/deployment.md (`docs`, extracted by ./run).
# `expect` is checked by eval.nix.
{ lib, docs ? [ ] }:

let
  modules = ../../nixos-modules;
  server = modules + "/relay-server.nix";
  identity = modules + "/relay-identity.nix";
  management = modules + "/relay-management.nix";
  connector = modules + "/relay-connector.nix";
  all = modules + "/default.nix";

  # The flake's outputs with a nixpkgs input that is only its lib: enough for
  # nixosModules and overlays.default, which is all a host takes from it.
  flake =
    let
      outputs = (import ../../flake.nix).outputs {
        self = outputs // { outPath = toString ../..; };
        nixpkgs = { inherit lib; };
      };
    in
    outputs;

  acme = {
    secretFile = "/run/keys/relay-acme.secret";
    settings = {
      relay_url = "http://relay.example.com:5000";
      targets.web.url = "http://127.0.0.1:8080";
    };
  };

  serverOn = { services.relay.server.enable = true; };
  identityOn = {
    services.relay.identity = {
      enable = true;
      database.createLocally = true;
    };
  };
  managementOn = {
    services.relay.management = {
      enable = true;
      database.urlFile = "/run/keys/relay-database-url";
    };
  };
  connectorOn = { services.relay.connector.instances.acme = acme; };

  oneHost = {
    services.relay.server = {
      enable = true;
      openFirewall = true;
      database.createLocally = true;
      rabbitmq.createLocally = true;
      settings.public_url = "http://relay.example.com:5000";
    };
    services.relay.identity = {
      enable = true;
      openFirewall = true;
      database.createLocally = true;
      settings.public_url = "http://relay.example.com:5002";
    };
    services.relay.management = {
      enable = true;
      database.createLocally = true;
    };
    services.relay.connector.instances.acme = acme;
  };
  oneHostUnits = [
    "relay-connector-acme.service"
    "relay-identity.service"
    "relay-management.service"
    "relay-rabbitmq-setup.service"
    "relay-server.service"
  ];

  alone = name: file: config: expect: {
    "${name}-alone" = {
      modules = [ file config ];
      inherit expect;
    };
    "${name}-via-default" = {
      modules = [ all config ];
      inherit expect;
    };
  };

  others = {
    # Two modules that both set an option (services.postgresql, the shared helpers) on one
    # host: the combination that once failed with "defined multiple times".
    all-on-one-host = {
      modules = [ server identity management connector oneHost ];
      expect = {
        units = oneHostUnits;
        checks = 4;
        tcpPorts = [ 5000 5002 ];
        postgresql = true;
        unitsContain = [ "BindsTo=rabbitmq.service" "PartOf=rabbitmq.service" ];
      };
    };

    # The same through the flake's wrappers, every one of them at once: one overlay in the end.
    all-flake-modules-on-one-host = {
      modules = with flake.nixosModules; [ relay-server relay-identity relay-management relay-connector default oneHost ];
      expect = {
        units = oneHostUnits;
        checks = 4;
        overlays = 1;
        postgresql = true;
      };
    };

    connector-two-instances = {
      modules = [
        connector
        {
          services.relay.connector.instances = {
            inherit acme;
            solo = {
              secretFile = "/run/keys/relay-solo.secret";
              settings = {
                tenant = "solo-tenant";
                relay_url = [ "http://relay1.example.com:5000" "http://relay2.example.com:5000" ];
                targets.erp = { url = "http://erp.lan:8000/api"; timeout = "30s"; };
              };
            };
            off = acme // { enable = false; };
          };
        }
      ];
      expect = {
        units = [ "relay-connector-acme.service" "relay-connector-solo.service" ];
        checks = 2;
        unitsContain = [ "User=relay-connector-solo" "Description=Relay connector solo (tenant solo-tenant)" ];
      };
    };

    # The third way to name the database: a URL without a password in the settings.
    identity-database-url = {
      modules = [
        identity
        {
          services.relay.identity = {
            enable = true;
            settings.database.url = "postgres://relay@db.internal/relay";
            database.migrate = false;
          };
        }
      ];
      expect = {
        units = [ "relay-identity.service" ];
        checks = 1;
        postgresql = false;
      };
    };

    connector-all-instances-off = {
      modules = [ connector { services.relay.connector.instances.acme = acme // { enable = false; }; } ];
      expect = {
        units = [ ];
        checks = 0;
      };
    };

    server-cluster-node = {
      modules = [
        server
        {
          services.relay.server = {
            enable = true;
            openFirewall = true;
            database.urlFile = "/run/keys/relay-database-url";
            bus.urlFile = "/run/keys/relay-amqp-url";
            settings = {
              listen.identity = "[::]:5002";
              body_store.path = "/srv/relay/bodies";
              bus.kind = "rabbitmq";
            };
          };
        }
      ];
      expect = {
        units = [ "relay-server.service" ];
        checks = 1;
        tcpPorts = [ 5000 5002 ];
        unitsContain = [ "ReadWritePaths=/srv/relay/bodies" "RequiresMountsFor=/srv/relay/bodies" "LoadCredential=amqp-url:/run/keys/relay-amqp-url" ];
      };
    };

    check-config-off = {
      modules = [
        all
        oneHost
        {
          services.relay = lib.genAttrs [ "server" "identity" "management" "connector" ] (_: { checkConfig = false; });
        }
      ];
      expect = {
        units = oneHostUnits;
        checks = 0;
      };
    };

    # Building for aarch64 on x86_64: the binaries cannot run at build time, so no check.
    cross-build = {
      modules = [ all oneHost ];
      pkgs = {
        hostSystem = "aarch64-linux";
        buildSystem = "x86_64-linux";
      };
      expect = {
        units = oneHostUnits;
        checks = 0;
      };
    };
  };

  docCases = lib.listToAttrs (map
    (doc: lib.nameValuePair doc.name {
      modules = [ doc.file ];
      specialArgs.relay = flake;
    })
    docs);
in
lib.mergeAttrsList [
  (alone "server" server serverOn {
    units = [ "relay-server.service" ];
    checks = 1;
    unitsContain = [ "User=relay-server" "ExecStartPre=" ];
  })
  (alone "identity" identity identityOn {
    units = [ "relay-identity.service" ];
    checks = 1;
    postgresql = true;
    unitsContain = [ "User=relay-identity" "Requires=postgresql.target" ];
  })
  (alone "management" management managementOn {
    units = [ "relay-management.service" ];
    checks = 1;
    unitsContain = [ "LoadCredential=database-url:/run/keys/relay-database-url" ];
  })
  (alone "connector" connector connectorOn {
    units = [ "relay-connector-acme.service" ];
    checks = 1;
    unitsContain = [ "LoadCredential=secret:/run/keys/relay-acme.secret" "StartLimitIntervalSec=0" ];
  })
  others
  docCases
]
