# OCI images, one per binary: the binary, CA certificates and a passwd entry for the
# numeric user; no shell. Each image is a gzipped tarball for `docker load` / `podman load`,
# tagged with the package version.
{ pkgs, version, packages }:

let
  inherit (pkgs) lib dockerTools;
  uid = "65532";
  dataDir = "/var/lib/relay";
  settingsFormat = pkgs.formats.toml { };

  passwd = pkgs.runCommand "relay-image-passwd" { } ''
    mkdir -p $out/etc
    echo 'relay:x:${uid}:${uid}:Relay:${dataDir}:/noshell' > $out/etc/passwd
    echo 'relay:x:${uid}:' > $out/etc/group
  '';

  # Defaults for a container: listen on all interfaces, SQLite and bodies in the volume.
  # Mount another file over /etc/relay/<service>.toml, or override single keys with
  # RELAY_<SERVICE>__<KEY> variables.
  defaultConfig = name: settings: pkgs.runCommand "relay-image-${name}-config" { } ''
    install -Dm644 ${settingsFormat.generate "${name}.toml" settings} $out/etc/relay/${name}.toml
  '';
  sqlite = "sqlite://${dataDir}/relay.db";

  image =
    { binary
    , ports ? [ ]
    , defaults ? null
    , env ? [ ]
    , cmd ? [ ]
    }:
    dockerTools.buildLayeredImage {
      name = binary;
      tag = version;
      contents = [ pkgs.cacert passwd ] ++ lib.optional (defaults != null) defaults;
      fakeRootCommands = ''
        mkdir -p .${dataDir} tmp
        chown ${uid}:${uid} .${dataDir}
        chmod 0700 .${dataDir}
        chmod 1777 tmp
      '';
      config = {
        Entrypoint = [ (lib.getExe packages.${binary}) ];
        Cmd = cmd;
        User = "${uid}:${uid}";
        WorkingDir = dataDir;
        Env = [ "SSL_CERT_FILE=${pkgs.cacert}/etc/ssl/certs/ca-bundle.crt" ] ++ env;
        ExposedPorts = lib.genAttrs (map (p: "${toString p}/tcp") ports) (_: { });
        Volumes.${dataDir} = { };
        Labels = {
          "org.opencontainers.image.title" = binary;
          "org.opencontainers.image.version" = version;
          "org.opencontainers.image.source" = "https://github.com/relay-project/relay";
        };
      };
    };
in
{
  image-relay-server = image {
    binary = "relay-server";
    ports = [ 5000 5002 ];
    defaults = defaultConfig "server" {
      listen = { public = "0.0.0.0:5000"; identity = "0.0.0.0:5002"; };
      database.url = sqlite;
      body_store.path = "${dataDir}/bodies";
    };
    env = [ "RELAY_SERVER_CONFIG=/etc/relay/server.toml" ];
  };

  image-relay-identity = image {
    binary = "relay-identity";
    ports = [ 5002 ];
    defaults = defaultConfig "identity" {
      listen.public = "0.0.0.0:5002";
      database.url = sqlite;
    };
    cmd = [ "--config" "/etc/relay/identity.toml" ];
  };

  image-relay-management = image {
    binary = "relay-management";
    ports = [ 5004 ];
    defaults = defaultConfig "management" {
      listen.public = "0.0.0.0:5004";
      database.url = sqlite;
    };
    cmd = [ "--config" "/etc/relay/management.toml" ];
  };

  # Configured through RELAY_CONNECTOR__* variables (or a mounted file and
  # RELAY_CONNECTOR_CONFIG); the secret is a mounted file.
  image-relay-connector = image {
    binary = "relay-connector";
    env = [ "RELAY_CONNECTOR__SECRET_FILE=/run/secrets/relay-connector-secret" ];
  };

  image-relayctl = image {
    binary = "relayctl";
    env = [ "RELAY_DATABASE_URL=${sqlite}" ];
  };
}
