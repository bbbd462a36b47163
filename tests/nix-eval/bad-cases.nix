# Configurations a NixOS user could write that must not evaluate, each with the text the
# error must contain: the option to change. `config` is one module; the case's service is
# otherwise configured as it would work.
{ lib }:

let
  inStore = "${builtins.storeDir}/0000000000000000000000000000000a-relay-secret";

  acme = {
    secretFile = "/run/keys/relay-acme.secret";
    settings.relay_url = "http://relay.example.com:5000";
  };

  server = settings: {
    services.relay.server = { enable = true; } // settings;
  };
  identity = settings: {
    services.relay.identity = {
      enable = true;
      database.createLocally = true;
    } // settings;
  };
  management = settings: {
    services.relay.management = {
      enable = true;
      database.createLocally = true;
    } // settings;
  };
  connector = instance: {
    services.relay.connector.instances.acme = instance;
  };

  # The same mistake in each of the three services that have a database.
  perDatabaseService = name: settings: expect:
    lib.listToAttrs (map
      (svc: lib.nameValuePair "${name}-${svc.name}" {
        config = svc.make settings;
        expect = map (e: builtins.replaceStrings [ "@" ] [ svc.name ] e) expect;
      })
      [
        { name = "server"; make = server; }
        { name = "identity"; make = identity; }
        { name = "management"; make = management; }
      ]);
in
lib.mergeAttrsList [
  ({
    listen-no-port.config = server { settings.listen.public = "0.0.0.0"; };
    listen-no-port.expect = [ "services.relay.server.settings.listen.public" ];

    listen-port-out-of-range.config = server { settings.listen.public = "0.0.0.0:99999"; };
    listen-port-out-of-range.expect = [ "services.relay.server.settings.listen.public" ];

    listen-identity-no-port.config = server { settings.listen.identity = "5002"; };
    listen-identity-no-port.expect = [ "services.relay.server.settings.listen.identity" ];

    identity-listen-no-port.config = identity { settings.listen.public = "localhost"; };
    identity-listen-no-port.expect = [ "services.relay.identity.settings.listen.public" ];

    management-listen-no-port.config = management { settings.listen.public = "127.0.0.1:"; };
    management-listen-no-port.expect = [ "services.relay.management.settings.listen.public" ];

    token-service-twice-on-one-port.config = lib.recursiveUpdate
      (server { settings.listen.identity = "0.0.0.0:5002"; })
      (identity { });
    token-service-twice-on-one-port.expect = [ "services.relay.server.settings.listen.identity" ];

    body-store-relative.config = server { settings.body_store.path = "bodies"; };
    body-store-relative.expect = [ "services.relay.server.settings.body_store.path" ];

    bus-kind-unknown.config = server { settings.bus.kind = "kafka"; };
    bus-kind-unknown.expect = [ "services.relay.server.settings.bus.kind" ];

    bus-rabbitmq-without-url.config = server { settings.bus.kind = "rabbitmq"; };
    bus-rabbitmq-without-url.expect = [ "services.relay.server.bus.urlFile" ];

    bus-urlfile-in-store.config = server {
      bus.urlFile = inStore;
      settings.bus.kind = "rabbitmq";
    };
    bus-urlfile-in-store.expect = [ "services.relay.server.bus.urlFile" ];

    bus-url-password.config = server {
      settings.bus = { kind = "rabbitmq"; url = "amqp://relay:hunter2@mq.internal:5672/relay"; };
    };
    bus-url-password.expect = [ "services.relay.server.bus.urlFile" ];

    bus-url-list-password.config = server {
      settings.bus = {
        kind = "rabbitmq";
        url = [ "amqp://relay@mq1.internal/relay" "amqp://relay:hunter2@mq2.internal/relay" ];
      };
    };
    bus-url-list-password.expect = [ "services.relay.server.bus.urlFile" ];

    settings-not-toml.config = server { settings.tracing = null; };
    settings-not-toml.expect = [ "services.relay.server.settings.tracing" ];

    settings-function.config = server { settings.limits = { max = _: 1; }; };
    settings-function.expect = [ "services.relay.server.settings.limits" ];

    identity-without-database.config = { services.relay.identity.enable = true; };
    identity-without-database.expect = [ "services.relay.identity.database.createLocally" ];

    management-without-database.config = { services.relay.management.enable = true; };
    management-without-database.expect = [ "services.relay.management.database.createLocally" ];

    connector-inline-secret.config = connector (acme // { settings = acme.settings // { secret = "s3cret"; }; });
    connector-inline-secret.expect = [ "services.relay.connector.instances.acme.secretFile" ];

    connector-secretfile-in-store.config = connector (acme // { secretFile = inStore; });
    connector-secretfile-in-store.expect = [ "services.relay.connector.instances.acme.secretFile" ];

    connector-secretfile-relative.config = connector (acme // { secretFile = "acme.secret"; });
    connector-secretfile-relative.expect = [ "services.relay.connector.instances.acme.secretFile" ];

    connector-without-secretfile.config = connector { inherit (acme) settings; };
    connector-without-secretfile.expect = [ "services.relay.connector.instances.acme.secretFile" ];

    connector-without-relay-url.config = connector { inherit (acme) secretFile; };
    connector-without-relay-url.expect = [ "services.relay.connector.instances.acme.settings.relay_url" ];

    connector-no-relays.config = connector (acme // { settings.relay_url = [ ]; });
    connector-no-relays.expect = [ "services.relay.connector.instances.acme.settings.relay_url" ];

    connector-name-too-long.config = {
      services.relay.connector.instances.customer-plant-seven = acme;
    };
    connector-name-too-long.expect = [ "services.relay.connector.instances.customer-plant-seven" "31 characters" ];

    connector-name-with-dot.config = {
      services.relay.connector.instances."plant.7" = acme;
    };
    connector-name-with-dot.expect = [ "services.relay.connector.instances.plant.7" "1-15 letters" ];

    connector-proxy-password.config = connector (acme // {
      settings = acme.settings // { proxy = "http://user:hunter2@proxy.lan:3128"; };
    });
    connector-proxy-password.expect = [ "services.relay.connector.instances.acme.settings.proxy" ];

    # The harness itself: a misspelt option and an option no stub declares must fail too.
    misspelt-option.config = { services.relay.server.enabel = true; };
    misspelt-option.expect = [ "services.relay.server.enabel" ];

    unit-type-unknown.config = lib.recursiveUpdate (server { })
      { systemd.services.relay-server.serviceConfig.Type = "notifyy"; };
    unit-type-unknown.expect = [ "systemd.services.relay-server.serviceConfig" ];
  })
  (perDatabaseService "urlfile-in-store" ({ database.urlFile = inStore; }) [ "services.relay.@.database.urlFile" ])
  (perDatabaseService "urlfile-relative" ({ database.urlFile = "relay-database-url"; }) [ "services.relay.@.database.urlFile" ])
  (perDatabaseService "database-url-password"
    ({ settings.database.url = "postgres://relay:hunter2@db.internal/relay"; })
    [ "services.relay.@.database.urlFile" ])
  (perDatabaseService "database-url-query-password"
    ({ settings.database.url = "postgres://relay@db.internal/relay?sslmode=require&password=hunter2"; })
    [ "services.relay.@.database.urlFile" ])
  (perDatabaseService "database-url-password-with-slash"
    ({ settings.database.url = "postgres://relay:hun/ter2@db.internal/relay"; })
    [ "services.relay.@.database.urlFile" ])
  (perDatabaseService "urlfile-and-url"
    ({
      database.urlFile = "/run/keys/relay-database-url";
      settings.database.url = "postgres://relay@db.internal/relay";
    })
    [ "services.relay.@.database.urlFile" "services.relay.@.settings.database.url" ])
  (perDatabaseService "createlocally-name-is-not-user"
    ({ database = { createLocally = true; name = "relaydb"; }; })
    [ "services.relay.@.database.name" ])
]
