# Stand-in `legacyPackages.<system>`: the builders the flake, oci/, tests/ and the modules
# call, each checking its arguments as nixpkgs 25.11 names them (accepted.nix), plus the
# plain packages they only refer to. An attribute that is not here is missing, as a
# misspelt one would be in nixpkgs; a real package the project starts to use goes into
# `leaves` below.
{ lib, system, overlays ? [ ] }:

let
  check = import ./check.nix { inherit lib; };
  accepted = import ./accepted.nix;
  hostPlatform = lib.systems.elaborate system;
  inherit (import ./derivation.nix { inherit lib check accepted hostPlatform; }) make leaf;

  # Packages that are only named, with their main program.
  leaves = {
    bash = "bash";
    bashInteractive = "bash";
    cacert = null;
    cargo = "cargo";
    clippy = "cargo-clippy";
    coreutils = null;
    curl = "curl";
    deadnix = "deadnix";
    docker = "docker";
    findutils = null;
    gnugrep = "grep";
    gnused = "sed";
    jq = "jq";
    nixpkgs-fmt = "nixpkgs-fmt";
    openssl = "openssl";
    pigz = "pigz";
    postgresql = "psql";
    python3 = "python3";
    qemu_test = null;
    rabbitmq-server = "rabbitmq-server";
    remarshal = "remarshal";
    rust-analyzer = "rust-analyzer";
    rustc = "rustc";
    rustfmt = "rustfmt";
    sqlite = "sqlite3";
    systemd = "systemctl";
    util-linux = null;
  };

  base = final:
    let
      inherit (final) runCommand writeTextFile;
    in
    lib.mapAttrs leaf leaves // {
      inherit lib system hostPlatform overlays;
      # The postgresql module's dataDir default names the major version (25.11: 17).
      postgresql = leaf "postgresql" leaves.postgresql // { psqlSchema = "17"; };
      buildPlatform = hostPlatform;
      config = { };
      callPackage = lib.callPackageWith final;
      extend = overlay: final.appendOverlays [ overlay ];
      appendOverlays = more: import ./pkgs.nix { inherit lib system; overlays = overlays ++ more; };

      stdenv = {
        inherit hostPlatform;
        buildPlatform = hostPlatform;
        targetPlatform = hostPlatform;
        inherit (hostPlatform) isLinux isDarwin;
        shell = "/bin/sh";
        mkDerivation = make { fn = "stdenv.mkDerivation"; accepted = accepted.mkDerivation; };
      };
      stdenvNoCC = final.stdenv;

      rustPlatform.buildRustPackage = import ./rust.nix { inherit lib check accepted make runCommand; };

      dockerTools = import ./docker.nix { inherit lib check accepted make hostPlatform; };

      testers.runNixOSTest = import ./nixos-test.nix { inherit lib make; hostPkgs = final; };

      formats =
        let
          generate = name: value: runCommand name
            {
              nativeBuildInputs = [ final.remarshal ];
              value = builtins.toJSON value;
              passAsFile = [ "value" ];
              preferLocalBuild = true;
            } ''json2toml "$valuePath" "$out"'';
          valueType = nullable: description:
            let
              t = lib.types.oneOf
                ((lib.optional nullable lib.types.null) ++ [
                  lib.types.bool
                  lib.types.int
                  lib.types.float
                  lib.types.str
                  lib.types.path
                  (lib.types.attrsOf t)
                  (lib.types.listOf t)
                ]) // { inherit description; };
            in
            t;
        in
        {
          toml = args: check.arguments "formats.toml" [ ] args // {
            type = valueType false "TOML value";
            inherit generate;
          };
          json = args: check.arguments "formats.json" [ ] args // {
            type = valueType true "JSON value";
            inherit generate;
          };
        };

      runCommand = name: env: buildCommand:
        make { fn = "runCommand"; accepted = null; } (
          check.type "runCommand" "the environment (second argument)" builtins.isAttrs "an attribute set" env
          // {
            inherit name;
            buildCommand = check.type "runCommand" "the build command (third argument)" builtins.isString "a string" buildCommand;
            passAsFile = [ "buildCommand" ] ++ env.passAsFile or [ ];
          }
        );
      runCommandLocal = name: env: final.runCommand name (env // { preferLocalBuild = true; allowSubstitutes = false; });

      writeTextFile = args:
        let
          a = check.required "writeTextFile" [ "name" "text" ] (check.arguments "writeTextFile" accepted.writeTextFile args);
          destination = a.destination or "";
          bin = builtins.match "/bin/([^/]+)" destination;
        in
        make { fn = "writeTextFile"; accepted = null; } ((a.derivationArgs or { }) // {
          inherit (a) name;
          text = check.type "writeTextFile" "text" builtins.isString "a string" a.text;
          executable = a.executable or false;
          inherit destination;
          checkPhase = a.checkPhase or "";
          passAsFile = [ "text" ];
          buildCommand = ''target=$out${destination}; mkdir -p "$(dirname "$target")"; cp "$textPath" "$target"'';
          meta = lib.optionalAttrs ((a.executable or false) && bin != null) { mainProgram = lib.head bin; } // a.meta or { };
          passthru = a.passthru or { };
        });
      writeText = name: text: writeTextFile { inherit name text; };
      writeScript = name: text: writeTextFile { inherit name text; executable = true; };
      writeScriptBin = name: text: writeTextFile { inherit name text; executable = true; destination = "/bin/${name}"; };
      writeShellScript = name: text: writeTextFile {
        inherit name;
        executable = true;
        text = "#!/bin/sh\n${check.type "writeShellScript" "the script (second argument)" builtins.isString "a string" text}";
      };
      writeShellScriptBin = name: text: writeTextFile {
        inherit name;
        executable = true;
        destination = "/bin/${name}";
        text = "#!/bin/sh\n${check.type "writeShellScriptBin" "the script (second argument)" builtins.isString "a string" text}";
      };
      writeShellApplication = args:
        let
          a = check.required "writeShellApplication" [ "name" "text" ]
            (check.arguments "writeShellApplication" accepted.writeShellApplication args);
        in
        writeTextFile {
          inherit (a) name;
          executable = true;
          destination = "/bin/${a.name}";
          text = "#!/bin/sh\nexport PATH=${lib.makeBinPath (a.runtimeInputs or [ ])}:$PATH\n${a.text}";
          meta = { mainProgram = a.name; } // a.meta or { };
          passthru = a.passthru or { };
        };

      symlinkJoin = args:
        let
          a = check.required "symlinkJoin" [ "paths" ] (check.arguments "symlinkJoin" accepted.symlinkJoin args);
        in
        make { fn = "symlinkJoin"; accepted = null; } (a // {
          paths = check.type "symlinkJoin" "paths" builtins.isList "a list" a.paths;
          buildCommand = "mkdir -p $out; for i in $paths; do ln -s $i/* $out/; done";
        });

      linkFarm = name: entries:
        let
          list =
            if builtins.isList entries then
              map
                (e: check.required "linkFarm: entry" [ "name" "path" ]
                  (check.names "linkFarm" "attribute of an entry" [ "name" "path" ] e))
                entries
            else if builtins.isAttrs entries then lib.mapAttrsToList (n: p: { name = n; path = p; }) entries
            else throw "linkFarm: entries must be a list of { name, path } or an attribute set, not ${builtins.typeOf entries}";
        in
        make { fn = "linkFarm"; accepted = null; } {
          inherit name;
          buildCommand = "mkdir -p $out; cd $out; "
          + lib.concatMapStrings (e: "mkdir -p \"$(dirname ${lib.escapeShellArg e.name})\"; ln -s ${e.path} ${lib.escapeShellArg e.name}; ") list;
          passthru.entries = entries;
        };

      mkShell = args:
        let
          a = check.arguments "mkShell" accepted.mkShell args;
        in
        make { fn = "mkShell"; accepted = null; } (removeAttrs a [ "packages" "inputsFrom" ] // {
          name = a.name or "nix-shell";
          nativeBuildInputs = (a.packages or [ ]) ++ a.nativeBuildInputs or [ ];
          buildInputs = a.buildInputs or [ ];
          phases = [ "buildPhase" ];
          buildPhase = "echo 'This derivation is not meant to be built, aside from its input derivations.' >> $out";
        });
    };
in
lib.fix (lib.extends (lib.composeManyExtensions overlays) base)
