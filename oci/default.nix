# OCI images, one per binary: the binary, CA certificates and a passwd entry for the
# numeric user; no shell. Each image is a gzipped tarball for `docker load` / `podman load`,
# tagged with the package version.
{ pkgs, version, packages }:

let
  inherit (pkgs) lib dockerTools;
  uid = "65532";
  dataDir = "/var/lib/relay";
  settingsFormat = pkgs.formats.toml { };
  specs = import ./config.nix { inherit dataDir; };

  passwd = pkgs.runCommand "relay-image-passwd" { } ''
    mkdir -p $out/etc
    echo 'relay:x:${uid}:${uid}:Relay:${dataDir}:/noshell' > $out/etc/passwd
    echo 'relay:x:${uid}:' > $out/etc/group
  '';

  # Defaults for a container: listen on all interfaces, SQLite and bodies in the volume.
  # Mount another file over /etc/relay/<file>, or override single keys with
  # RELAY_<SERVICE>__<KEY> variables.
  defaultConfig = name: file: settings: pkgs.runCommand "relay-image-${name}-config" { } ''
    install -Dm644 ${settingsFormat.generate file settings} $out/etc/relay/${file}
  '';

  image = binary:
    let
      spec = specs.${binary};
      defaults = lib.optional (spec ? settings) (defaultConfig binary spec.file spec.settings);
    in
    dockerTools.buildLayeredImage {
      name = binary;
      tag = version;
      contents = [ pkgs.cacert passwd ] ++ defaults;
      fakeRootCommands = ''
        mkdir -p .${dataDir} tmp
        chown ${uid}:${uid} .${dataDir}
        chmod 0700 .${dataDir}
        chmod 1777 tmp
      '';
      config = {
        # Only the binary: `docker run IMAGE check-config` keeps the configuration, which
        # comes from Env (oci/config.nix).
        Entrypoint = [ (lib.getExe packages.${binary}) ];
        User = "${uid}:${uid}";
        WorkingDir = dataDir;
        Env = [ "SSL_CERT_FILE=${pkgs.cacert}/etc/ssl/certs/ca-bundle.crt" ] ++ spec.env;
        ExposedPorts = lib.genAttrs (map (p: "${toString p}/tcp") (spec.ports or [ ])) (_: { });
        Volumes.${dataDir} = { };
        Labels = {
          "org.opencontainers.image.title" = binary;
          "org.opencontainers.image.version" = version;
          "org.opencontainers.image.source" = "https://github.com/relay-project/relay";
        };
      };
    };
in
lib.mapAttrs' (binary: _: lib.nameValuePair "image-${binary}" (image binary)) specs
