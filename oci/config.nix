# What each image runs with, as plain data: the arguments after the binary in `Entrypoint`,
# the environment, and the defaults written to /etc/relay/<file>. oci/default.nix builds the
# images from it; scripts/check-images renders the same data and runs each binary's
# `check-config` under it, with the overrides docs/deployment.md documents. Everything that
# must survive `docker run IMAGE ARGS…` is here, never in `Cmd` (which ARGS replace).
{ dataDir }:

let
  sqlite = "sqlite://${dataDir}/relay.db";
in
{
  relay-server = {
    ports = [ 5000 5002 ];
    file = "server.toml";
    # The database default is a `url` in the file; a RELAY_SERVER__DATABASE__URL_FILE
    # variable replaces it (relay-core's loader treats `url` and `url_file` as one setting).
    settings = {
      listen = { public = "0.0.0.0:5000"; identity = "0.0.0.0:5002"; };
      database.url = sqlite;
      body_store.path = "${dataDir}/bodies";
    };
    env = [ "RELAY_SERVER_CONFIG=/etc/relay/server.toml" ];
  };

  relay-identity = {
    ports = [ 5002 ];
    file = "identity.toml";
    settings = {
      listen.public = "0.0.0.0:5002";
      database.url = sqlite;
    };
    # Migrates on start, as the NixOS module's `database.migrate` does.
    env = [
      "RELAY_IDENTITY_CONFIG=/etc/relay/identity.toml"
      "RELAY_IDENTITY_MIGRATE=true"
    ];
  };

  relay-management = {
    ports = [ 5004 ];
    file = "management.toml";
    settings = {
      listen.public = "0.0.0.0:5004";
      database.url = sqlite;
    };
    env = [ "RELAY_MANAGEMENT_CONFIG=/etc/relay/management.toml" ];
  };

  # Configured through RELAY_CONNECTOR__* variables (or a mounted file and
  # RELAY_CONNECTOR_CONFIG); the secret is a mounted file.
  relay-connector = {
    env = [ "RELAY_CONNECTOR__SECRET_FILE=/run/secrets/relay-connector-secret" ];
  };

  relayctl = {
    env = [ "RELAY_DATABASE_URL=${sqlite}" ];
  };
}
