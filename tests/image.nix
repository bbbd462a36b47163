# Loads the relayctl, relay-server and relay-connector images into Docker and runs a relay
# with a connector from them, sharing only a named volume and the host network.
{ pkgs, images }:

let
  ref = image: "${image.imageName}:${image.imageTag}";
  server = ref images.image-relay-server;
  relayctl = ref images.image-relayctl;
  connector = ref images.image-relay-connector;
in
pkgs.testers.runNixOSTest {
  name = "relay-image";

  nodes.machine = { pkgs, ... }: {
    virtualisation = {
      docker.enable = true;
      diskSize = 4096;
      memorySize = 2048;
    };
    environment.systemPackages = [ pkgs.curl ];
  };

  testScript = ''
    machine.wait_for_unit("docker.service")

    with subtest("images load and are what they claim"):
        for tarball in [
            "${images.image-relay-server}",
            "${images.image-relayctl}",
            "${images.image-relay-connector}",
        ]:
            machine.succeed(f"docker load < {tarball}")
        machine.succeed("docker image inspect -f '{{.Config.User}}' ${server} | grep -x 65532:65532")
        machine.fail("docker run --rm --entrypoint /bin/sh ${server} -c true")
        machine.succeed("docker run --rm ${server} check-config | grep 'configuration is valid'")

    with subtest("relayctl prepares the volume"):
        ctl = "docker run --rm -v relay-data:/var/lib/relay ${relayctl}"
        machine.succeed(f"{ctl} migrate")
        machine.succeed(f"{ctl} tenant create acme")
        secret = machine.succeed(f"{ctl} secret create acme").strip().splitlines()[-1]
        machine.succeed(f"printf %s '{secret}' > /root/acme.secret && chmod 0644 /root/acme.secret")

    with subtest("relay-server and relay-connector containers relay a request"):
        machine.succeed("docker run -d --name relay --network host -v relay-data:/var/lib/relay ${server}")
        machine.wait_for_open_port(5000)
        machine.wait_until_succeeds("curl -sf http://127.0.0.1:5000/health/ready", timeout=60)
        machine.succeed(
            "docker run -d --name connector --network host"
            " -v /root/acme.secret:/run/secrets/relay-connector-secret:ro"
            " -e RELAY_CONNECTOR__RELAY_URL=http://127.0.0.1:5000"
            " -e RELAY_CONNECTOR__TENANT=acme"
            " ${connector}"
        )
        machine.wait_until_succeeds("curl -sf http://127.0.0.1:5000/relay/acme/ping | grep -x PONG", timeout=60)
        machine.succeed("curl -sf -d image-test-5d1c http://127.0.0.1:5000/relay/acme/echo | grep -x image-test-5d1c")

    with subtest("state survives a new container on the same volume"):
        machine.succeed("docker rm -f relay")
        machine.succeed("docker run -d --name relay2 --network host -v relay-data:/var/lib/relay ${server}")
        machine.wait_until_succeeds("curl -sf http://127.0.0.1:5000/relay/acme/ping | grep -x PONG", timeout=90)
  '';
}
