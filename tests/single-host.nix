# Everything on one host, each service from its own flake module (the combination that
# once failed to evaluate): relay-server with a local PostgreSQL and RabbitMQ, relay-identity
# and relay-management on the same database, and a connector to a private target. Checks
# one user per service, peer authentication through the ident map, readiness of a connector
# whose relay is down, and a broker wiped of its user.
{ pkgs, relayModules }:

let
  marker = "RELAY-SINGLE-HOST-5c21d8";
  dbUrl = "postgres:///relay?host=/run/postgresql&user=relay";
in
pkgs.testers.runNixOSTest {
  name = "relay-single-host";
  node.pkgsReadOnly = false;

  nodes.host = { pkgs, ... }: {
    imports = with relayModules; [ relay-server relay-identity relay-management relay-connector ];
    services.relay = {
      server = {
        enable = true;
        database.createLocally = true;
        rabbitmq.createLocally = true;
        settings.tunnel = {
          keep_alive_interval = "1s";
          reconnect_max_delay = "3s";
        };
      };
      identity = {
        enable = true;
        database.createLocally = true;
        settings.public_url = "http://127.0.0.1:5002";
      };
      management = {
        enable = true;
        database.createLocally = true;
      };
      connector.instances.acme = {
        secretFile = "/var/lib/relay-secrets/acme";
        settings = {
          relay_url = "http://127.0.0.1:5000";
          targets.web.url = "http://127.0.0.1:8080";
        };
      };
    };
    systemd.services.target = {
      wantedBy = [ "multi-user.target" ];
      preStart = "mkdir -p /srv/www && echo ${marker} > /srv/www/marker.txt";
      serviceConfig.ExecStart = "${pkgs.python3}/bin/python3 -m http.server 8080 --bind 127.0.0.1 --directory /srv/www";
    };
    environment.systemPackages = [ pkgs.relayctl pkgs.curl ];
  };

  testScript = ''
    def relayctl(args):
        # As root: the ident map lets root use the role `relay` by peer authentication.
        return host.succeed(f"relayctl --database-url '${dbUrl}' {args}")

    def user_of(unit):
        return host.succeed(f"systemctl show -p User --value {unit}").strip()

    host.wait_for_unit("relay-server.service")
    host.wait_for_unit("relay-identity.service")
    host.wait_for_unit("relay-management.service")

    with subtest("one user per service, one database for all"):
        assert user_of("relay-server") == "relay-server"
        assert user_of("relay-identity") == "relay-identity"
        assert user_of("relay-management") == "relay-management"
        assert user_of("relay-connector-acme") == "relay-connector-acme"
        host.succeed("curl -sf http://127.0.0.1:5000/health/ready")
        host.succeed("curl -sf http://127.0.0.1:5002/.well-known/openid-configuration")
        host.wait_for_open_port(5004)
        relayctl("tenant create acme")
        secret = relayctl("secret create acme").strip().splitlines()[-1]
        # The management API reads the same database (401 without a token, not 5xx).
        host.succeed("curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:5004/management/tenants | grep -x 401")

    with subtest("the connector is ready while its relay is down, and says so"):
        host.succeed(
            "install -d -m 0700 /var/lib/relay-secrets"
            f" && printf %s '{secret}' > /var/lib/relay-secrets/acme"
            " && chmod 0600 /var/lib/relay-secrets/acme"
        )
        host.succeed("systemctl stop relay-server.service")
        # `systemctl restart` waits for READY=1: it returns although no tunnel can open.
        host.succeed("timeout 60 systemctl restart relay-connector-acme.service")
        # "connecting to 1 relay (2 tunnels)…", then "retrying …: … (0 of 2 tunnels up)".
        host.succeed("systemctl show -p StatusText --value relay-connector-acme | grep -E '^(connecting|retrying)'")
        host.succeed("systemctl start relay-server.service")
        host.wait_until_succeeds(
            "systemctl show -p StatusText --value relay-connector-acme | grep -E '[1-9][0-9]* of [0-9]+ tunnels up'",
            timeout=60,
        )

    with subtest("requests reach the private target"):
        host.wait_until_succeeds(
            "curl -sf http://127.0.0.1:5000/relay/acme/web/marker.txt | grep -x ${marker}", timeout=60
        )

    with subtest("a broker wiped of its user gets it back"):
        host.succeed("su -s /bin/sh rabbitmq -c \"rabbitmqctl delete_user relay\"")
        host.succeed("systemctl restart rabbitmq.service")
        host.wait_for_unit("relay-rabbitmq-setup.service")
        host.succeed("su -s /bin/sh rabbitmq -c \"rabbitmqctl list_users --silent\" | cut -f1 | grep -x relay")
        host.wait_until_succeeds(
            "curl -sf http://127.0.0.1:5000/relay/acme/web/marker.txt | grep -x ${marker}", timeout=90
        )
  '';
}
