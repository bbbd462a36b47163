# The cluster: PostgreSQL, RabbitMQ (own vhost and user), an NFS body volume, two relay
# nodes, relay-identity, relay-management, a connector host with a private target, and a
# client. Checks both nodes, a 100 MiB body across nodes, a crashed node, and a connector
# whose network is cut and restored.
{ pkgs, relayModules }:

let
  marker = "RELAY-MULTI-NODE-b41e07";
  dbUrl = "postgres://relay:relay-db-test-pw@db/relay";
  amqpUrl = "amqp://relay:relay-mq-test-pw@mq:5672/relay";
  squashUid = "2000";

  # Test-only secrets written at boot; real hosts put these files in place out of band.
  secretFiles = {
    systemd.tmpfiles.rules = [
      "d /etc/relay 0700 root root -"
      "f /etc/relay/database-url 0600 root root - ${dbUrl}"
      "f /etc/relay/amqp-url 0600 root root - ${amqpUrl}"
    ];
  };

  relayNode = name: { pkgs, ... }: {
    imports = [ relayModules.default secretFiles ];
    virtualisation.fileSystems."/srv/relay/bodies" = {
      device = "nfs:/srv/relay-bodies";
      fsType = "nfs";
      options = [ "vers=4.2" ];
    };
    services.relay.server = {
      enable = true;
      openFirewall = true;
      database.urlFile = "/etc/relay/database-url";
      bus.urlFile = "/etc/relay/amqp-url";
      settings = {
        public_url = "http://${name}:5000";
        identity.authority = "http://identity:5002";
        body_store.path = "/srv/relay/bodies";
        bus.kind = "rabbitmq";
        # Across nodes the expiry covers whole bodies (store-and-forward); room for 100 MiB.
        relay.request_expiry = "600s";
        tunnel = {
          keep_alive_interval = "1s";
          reconnect_max_delay = "3s";
        };
        node.heartbeat_interval = "1s";
      };
    };
    environment.systemPackages = [ pkgs.curl ];
  };
in
pkgs.testers.runNixOSTest {
  name = "relay-multi-node";
  # The flake's modules add the package overlay to the nodes' nixpkgs, as on a real host.
  node.pkgsReadOnly = false;

  nodes = {
    db = { pkgs, ... }: {
      imports = [ relayModules.default ];
      services.postgresql = {
        enable = true;
        enableTCPIP = true;
        ensureDatabases = [ "relay" ];
        ensureUsers = [{ name = "relay"; ensureDBOwnership = true; }];
        authentication = "host relay relay samenet scram-sha-256";
      };
      networking.firewall.allowedTCPPorts = [ 5432 ];
      environment.systemPackages = [ pkgs.relayctl ];
    };

    mq = {
      services.rabbitmq = {
        enable = true;
        listenAddress = "0.0.0.0";
      };
      networking.firewall.allowedTCPPorts = [ 5672 ];
    };

    nfs = {
      services.nfs.server = {
        enable = true;
        # Every relay node runs as its own dynamic UID; squashing all of them to one owner
        # lets each node read the bodies the other wrote.
        exports = ''
          /srv/relay-bodies *(rw,sync,no_subtree_check,all_squash,anonuid=${squashUid},anongid=${squashUid})
        '';
      };
      systemd.tmpfiles.rules = [ "d /srv/relay-bodies 0700 ${squashUid} ${squashUid} -" ];
      networking.firewall.allowedTCPPorts = [ 2049 ];
    };

    relay1 = relayNode "relay1";
    relay2 = relayNode "relay2";

    identity = {
      imports = [ relayModules.default secretFiles ];
      services.relay.identity = {
        enable = true;
        openFirewall = true;
        database.urlFile = "/etc/relay/database-url";
        settings.public_url = "http://identity:5002";
      };
    };

    management = {
      imports = [ relayModules.default secretFiles ];
      services.relay.management = {
        enable = true;
        openFirewall = true;
        database.urlFile = "/etc/relay/database-url";
        settings = {
          listen.public = "0.0.0.0:5004";
          identity.authority = "http://identity:5002";
        };
      };
    };

    connector = { pkgs, ... }: {
      imports = [ relayModules.default ];
      services.relay.connector.instances = {
        # One tunnel to each node.
        acme = {
          secretFile = "/var/lib/relay-secrets/acme";
          settings = {
            relay_url = [ "http://relay1:5000" "http://relay2:5000" ];
            targets.web.url = "http://127.0.0.1:8080";
          };
        };
        # Only on relay2, so requests for it that arrive at relay1 must cross nodes.
        solo = {
          secretFile = "/var/lib/relay-secrets/solo";
          settings = {
            relay_url = "http://relay2:5000";
            targets.web.url = "http://127.0.0.1:8080";
          };
        };
      };
      systemd.services.target = {
        wantedBy = [ "multi-user.target" ];
        preStart = "mkdir -p /srv/www && echo ${marker} > /srv/www/marker.txt";
        serviceConfig.ExecStart = "${pkgs.python3}/bin/python3 -m http.server 8080 --bind 127.0.0.1 --directory /srv/www";
      };
      virtualisation.diskSize = 2048;
    };

    client = { pkgs, ... }: {
      environment.systemPackages = [ pkgs.curl ];
      virtualisation.diskSize = 2048;
    };
  };

  testScript = ''
    def code(url):
        return client.succeed(f"curl -s -m 30 -o /dev/null -w '%{{http_code}}' {url}").strip()

    def relayctl(args):
        return db.succeed(f"relayctl --database-url '${dbUrl}' {args}")

    with subtest("backing services"):
        db.start()
        mq.start()
        nfs.start()
        db.wait_for_unit("postgresql.target")
        db.succeed("runuser -u postgres -- psql -c \"ALTER ROLE relay WITH LOGIN PASSWORD 'relay-db-test-pw'\"")
        relayctl("migrate")
        mq.wait_for_unit("rabbitmq.service")
        for cmd in [
            "add_vhost relay",
            "add_user relay relay-mq-test-pw",
            "set_permissions -p relay relay '.*' '.*' '.*'",
        ]:
            mq.succeed(f"su -s /bin/sh rabbitmq -c \"rabbitmqctl {cmd}\"")
        nfs.wait_for_unit("nfs-server.service")

    with subtest("relay services start"):
        for m in [identity, relay1, relay2, management, connector, client]:
            m.start()
        identity.wait_for_unit("relay-identity.service")
        identity.wait_for_open_port(5002)
        for r in [relay1, relay2]:
            r.wait_for_unit("relay-server.service")
            r.wait_for_open_port(5000)
            r.succeed("findmnt -t nfs4 /srv/relay/bodies")
        management.wait_for_unit("relay-management.service")
        management.wait_for_open_port(5004)

    with subtest("tenants, secrets and connectors"):
        for tenant in ["acme", "solo"]:
            relayctl(f"tenant create {tenant}")
            secret = relayctl(f"secret create {tenant}").strip().splitlines()[-1]
            connector.succeed(
                "install -d -m 0700 /var/lib/relay-secrets"
                f" && printf %s '{secret}' > /var/lib/relay-secrets/{tenant}"
                f" && chmod 0600 /var/lib/relay-secrets/{tenant}"
                f" && systemctl restart --no-block relay-connector-{tenant}.service"
            )
            connector.wait_for_unit(f"relay-connector-{tenant}.service")

    with subtest("requests through both nodes"):
        for node in ["relay1", "relay2"]:
            client.wait_until_succeeds(
                f"curl -sf http://{node}:5000/relay/acme/web/marker.txt | grep -x ${marker}", timeout=90
            )
            client.succeed(
                f"curl -sf -D - -o /dev/null http://{node}:5000/trace/acme/ping"
                " | grep -i '^x-relay-connector-machine: connector'"
            )
        assert code("http://relay1:5000/relay/nobody/ping") == "404"

    with subtest("a request crosses nodes through the broker"):
        client.wait_until_succeeds("curl -sf http://relay1:5000/relay/solo/ping | grep -x PONG", timeout=90)
        client.succeed("curl -sf http://relay1:5000/relay/solo/web/marker.txt | grep -x ${marker}")

    with subtest("100 MiB bodies across nodes through the NFS volume"):
        connector.succeed("head -c 100M /dev/urandom > /srv/www/big.bin")
        expected = connector.succeed("sha256sum /srv/www/big.bin").split()[0]
        got = client.succeed("curl -sf -m 300 http://relay1:5000/relay/solo/web/big.bin | sha256sum").split()[0]
        assert got == expected, f"download: {got} != {expected}"
        client.succeed("head -c 100M /dev/urandom > /tmp/upload.bin")
        sent = client.succeed("sha256sum /tmp/upload.bin").split()[0]
        echoed = client.succeed(
            "curl -sf -m 300 -H 'content-type: application/octet-stream'"
            " --data-binary @/tmp/upload.bin http://relay1:5000/relay/solo/echo | sha256sum"
        ).split()[0]
        assert echoed == sent, f"upload: {echoed} != {sent}"
        # Each body file is deleted after use.
        relay2.wait_until_succeeds("test -z \"$(find /srv/relay/bodies -type f)\"", timeout=60)

    with subtest("connector network cut: no connector, then reconnect"):
        connector.block()
        for node in ["relay1", "relay2"]:
            client.wait_until_succeeds(
                f"curl -s -m 30 -o /dev/null -w '%{{http_code}}' http://{node}:5000/relay/acme/ping | grep -x 503",
                timeout=90,
            )
        connector.unblock()
        for node in ["relay1", "relay2"]:
            client.wait_until_succeeds(f"curl -sf http://{node}:5000/relay/acme/ping | grep -x PONG", timeout=90)
        client.wait_until_succeeds("curl -sf http://relay1:5000/relay/solo/ping | grep -x PONG", timeout=90)

    with subtest("relay1 crashes; relay2 keeps serving"):
        relay1.crash()
        for _ in range(20):
            client.succeed("curl -sf -m 10 http://relay2:5000/relay/acme/web/marker.txt | grep -x ${marker}")
            client.succeed("curl -sf -m 10 http://relay2:5000/relay/solo/ping | grep -x PONG")

    with subtest("relay1 comes back and serves again"):
        relay1.start()
        relay1.wait_for_unit("relay-server.service")
        client.wait_until_succeeds(
            "curl -sf http://relay1:5000/relay/acme/web/marker.txt | grep -x ${marker}", timeout=90
        )
        client.wait_until_succeeds("curl -sf http://relay1:5000/relay/solo/ping | grep -x PONG", timeout=90)

    with subtest("management API answers and wants a token"):
        assert code("http://management:5004/management/tenants") == "401"
  '';
}
