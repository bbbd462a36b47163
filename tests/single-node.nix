# One relay node on the embedded default (SQLite, in-process bus and token service) and a
# connector on a second machine that reaches a private target.
{ pkgs, relayModules }:

let
  marker = "RELAY-SINGLE-NODE-7f3a9c";
in
pkgs.testers.runNixOSTest {
  name = "relay-single-node";
  # The flake's modules add the package overlay to the nodes' nixpkgs, as on a real host.
  node.pkgsReadOnly = false;

  nodes = {
    relay = { config, pkgs, ... }: {
      imports = [ relayModules.default ];
      services.relay.server = {
        enable = true;
        openFirewall = true;
        settings = {
          listen.identity = "0.0.0.0:5002";
          identity.authority = "http://relay:5002";
          tunnel = {
            keep_alive_interval = "1s";
            reconnect_max_delay = "3s";
          };
        };
      };
      environment.systemPackages = [ config.services.relay.server.relayctlPackage pkgs.curl ];
    };

    connector = { pkgs, ... }: {
      imports = [ relayModules.default ];
      services.relay.connector.instances.acme = {
        secretFile = "/var/lib/relay-secrets/acme";
        settings = {
          relay_url = "http://relay:5000";
          targets.web.url = "http://127.0.0.1:8080";
        };
      };
      # The private target: only the connector can reach it.
      systemd.services.target = {
        wantedBy = [ "multi-user.target" ];
        preStart = "mkdir -p /srv/www && echo ${marker} > /srv/www/marker.txt";
        serviceConfig.ExecStart = "${pkgs.python3}/bin/python3 -m http.server 8080 --bind 127.0.0.1 --directory /srv/www";
      };
    };
  };

  testScript = { nodes, ... }:
    let
      relayctl = pkgs.lib.getExe nodes.relay.services.relay.server.relayctlPackage;
    in
    ''
      def relayctl(args):
          # As the service's dynamic user, so the SQLite files keep their owner.
          return relay.succeed(
              "systemd-run --quiet --wait --pipe --collect"
              " -p DynamicUser=yes -p User=relay-server -p StateDirectory=relay-server"
              f" ${relayctl} --database-url sqlite:///var/lib/relay-server/relay.db {args}"
          )

      def status(url):
          return relay.succeed(f"curl -s -o /dev/null -w '%{{http_code}}' {url}").strip()

      start_all()

      with subtest("relay-server is up, hardened, on the embedded default"):
          relay.wait_for_unit("relay-server.service")
          relay.wait_for_open_port(5000)
          relay.wait_for_open_port(5002)
          relay.succeed("curl -sf http://127.0.0.1:5000/health/ready")
          relay.succeed("curl -sf http://127.0.0.1:5002/.well-known/openid-configuration")
          relay.succeed("systemctl show relay-server -p DynamicUser | grep -x DynamicUser=yes")
          relay.succeed("systemctl show relay-server -p Type | grep -x Type=notify")
          assert status("http://127.0.0.1:5000/relay/nobody/ping") == "404"

      with subtest("tenant and secret from relayctl"):
          relayctl("tenant create acme")
          secret = relayctl("secret create acme").strip().splitlines()[-1]

      with subtest("the connector dials out with its secret"):
          connector.succeed(
              "install -d -m 0700 /var/lib/relay-secrets"
              f" && printf %s '{secret}' > /var/lib/relay-secrets/acme"
              " && chmod 0600 /var/lib/relay-secrets/acme"
          )
          connector.succeed("systemctl restart --no-block relay-connector-acme.service")
          connector.wait_for_unit("relay-connector-acme.service")

      with subtest("requests reach the private target"):
          relay.wait_until_succeeds(
              "curl -sf http://127.0.0.1:5000/relay/acme/web/marker.txt | grep -x ${marker}", timeout=60
          )
          relay.succeed("curl -sf http://127.0.0.1:5000/relay/acme/ping | grep -x PONG")
          relay.succeed("curl -sf -d hello-${marker} http://127.0.0.1:5000/relay/acme/echo | grep -x hello-${marker}")
          relay.succeed(
              "curl -sf -D - -o /dev/null http://127.0.0.1:5000/trace/acme/ping"
              " | grep -i '^x-relay-connector-machine: connector'"
          )
          assert status("http://127.0.0.1:5000/relay/acme/missing/x") == "404"

      with subtest("connector network cut: 503, then reconnect"):
          connector.block()
          relay.wait_until_succeeds(
              "curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:5000/relay/acme/ping | grep -x 503",
              timeout=60,
          )
          connector.unblock()
          relay.wait_until_succeeds(
              "curl -sf http://127.0.0.1:5000/relay/acme/ping | grep -x PONG", timeout=60
          )

      with subtest("restart keeps tenants (state in /var/lib/relay-server)"):
          relay.succeed("systemctl restart relay-server.service")
          relay.wait_for_unit("relay-server.service")
          relay.wait_until_succeeds(
              "curl -sf http://127.0.0.1:5000/relay/acme/web/marker.txt | grep -x ${marker}", timeout=60
          )
    '';
}
