# Stand-in dockerTools: streamLayeredImage's closed argument set (nixpkgs 25.11), the
# `compressor` of buildLayeredImage, maxLayers, the image config's keys (OCI image
# config, which nixpkgs passes on unchecked) and the shape of Env and ExposedPorts. The
# result has the attributes image consumers read: imageName, imageTag.
{ lib, check, accepted, make, hostPlatform }:

let
  goArch = {
    x86_64 = "amd64";
    aarch64 = "arm64";
  }.${hostPlatform.parsed.cpu.name} or hostPlatform.parsed.cpu.name;

  image = fn: drvName: args:
    let
      a = check.required fn [ "name" ] (check.arguments fn accepted.${fn} args);
      config = check.names "${fn}: config" "key" accepted.imageConfig (a.config or { });
      contents = lib.toList (a.contents or [ ]);
      badContents = lib.filter (c: !(lib.isDerivation c || builtins.isPath c || lib.isStringLike c)) contents;
      badEnv = lib.filter (e: !(builtins.isString e && lib.hasInfix "=" e)) (config.Env or [ ]);
      badPorts = lib.filter (p: builtins.match "[0-9]+(/(tcp|udp|sctp))?" p == null)
        (lib.attrNames (config.ExposedPorts or { }));
      valid = check.all fn [
        {
          ok = (a.maxLayers or 100) > 1;
          message = "the maxLayers argument of dockerTools.buildLayeredImage function must be greather than 1 (current value: ${toString a.maxLayers})";
        }
        {
          ok = badContents == [ ];
          message = "contents must be derivations or paths, not ${lib.concatMapStringsSep ", " builtins.typeOf badContents}";
        }
        {
          ok = badEnv == [ ];
          message = "config.Env entries are \"NAME=value\": ${lib.generators.toPretty { } badEnv}";
        }
        {
          ok = badPorts == [ ];
          message = "config.ExposedPorts keys are \"PORT/tcp\" or \"PORT/udp\": ${toString badPorts}";
        }
      ]
        a;
      result = make { inherit fn; accepted = null; } {
        name = drvName valid;
        imageName = lib.toLower valid.name;
        inherit contents;
        baseJson = builtins.toJSON {
          inherit config;
          architecture = valid.architecture or goArch;
          os = "linux";
        };
        extraCommands = valid.extraCommands or "";
        fakeRootCommands = valid.fakeRootCommands or "";
        passthru = (valid.passthru or { }) // {
          imageTag =
            if (valid.tag or null) != null then valid.tag
            else lib.head (lib.splitString "-" (baseNameOf (builtins.unsafeDiscardStringContext result.outPath)));
        };
        meta = valid.meta or { };
      };
    in
    result;

  tarball = a: baseNameOf a.name + {
    none = ".tar";
    gz = ".tar.gz";
    zstd = ".tar.zst";
  }.${a.compressor or "gz"} or (throw "in docker image ${a.name}: compressor must be one of: [${toString accepted.compressors}]");
in
{
  buildLayeredImage = image "buildLayeredImage" tarball;
  streamLayeredImage = image "streamLayeredImage" (a: "stream-${baseNameOf a.name}");
}
