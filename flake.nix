{
  description = "Relay: multi-tenant HTTP relay (server, identity, management, connector)";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.11";

  outputs = { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAllSystems = f: lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
      version = (lib.importTOML ./Cargo.toml).workspace.package.version;
      binaries = [ "relay-server" "relay-identity" "relay-management" "relay-connector" "relayctl" ];

      # Only what cargo needs; the tests read examples/, docs/ (the configuration reference
      # is checked against the code) and packaging/ (the Debian package's unit).
      src = lib.fileset.toSource {
        root = ./.;
        fileset = lib.fileset.unions [ ./Cargo.toml ./Cargo.lock ./crates ./examples ./docs ./packaging ];
      };

      # One workspace build of every deployable. The test suite runs in checks.cargo-test:
      # most of it needs PostgreSQL, RabbitMQ and the other binaries.
      workspace = pkgs: pkgs.rustPlatform.buildRustPackage {
        pname = "relay";
        inherit version src;
        cargoLock.lockFile = ./Cargo.lock;
        cargoBuildFlags = lib.concatMap (b: [ "-p" b ]) binaries;
        doCheck = false;
        meta = {
          description = "Multi-tenant HTTP relay";
          license = with lib.licenses; [ mit asl20 ];
          platforms = lib.platforms.linux;
          mainProgram = "relay-server";
        };
      };

      # One package per binary, copied out of the workspace build so that each closure
      # (and each image) holds only its own binary.
      split = pkgs: ws: name: pkgs.runCommand "${name}-${version}"
        {
          inherit version;
          meta = ws.meta // { mainProgram = name; };
        } ''install -Dm755 ${ws}/bin/${name} $out/bin/${name}'';

      relayPackages = pkgs:
        let ws = workspace pkgs;
        in lib.genAttrs binaries (split pkgs ws) // { workspace = ws; };

      # The modules take their packages from the host's `pkgs` (`pkgs.relay-server`, …);
      # the flake's modules add this overlay. Its `key` makes the module system import it
      # once, however many of the flake's modules a host imports.
      withOverlay = file: {
        imports = [
          file
          { key = "relay-overlay"; nixpkgs.overlays = [ self.overlays.default ]; }
        ];
      };
    in
    {
      packages = forAllSystems (pkgs:
        let
          p = relayPackages pkgs;
          images = import ./oci { inherit pkgs version; packages = p; };
        in
        removeAttrs p [ "workspace" ] // images // {
          default = pkgs.symlinkJoin {
            name = "relay-${version}";
            paths = map (b: p.${b}) binaries;
            meta = p.workspace.meta;
          };
          images = pkgs.linkFarm "relay-images-${version}"
            (lib.mapAttrsToList (name: path: { name = "${name}.tar.gz"; inherit path; }) images);
        });

      # pkgs.relay-server, relay-identity, relay-management, relay-connector and relayctl.
      overlays.default = final: _prev: removeAttrs (relayPackages final) [ "workspace" ];

      nixosModules = {
        relay-server = withOverlay ./nixos-modules/relay-server.nix;
        relay-identity = withOverlay ./nixos-modules/relay-identity.nix;
        relay-management = withOverlay ./nixos-modules/relay-management.nix;
        relay-connector = withOverlay ./nixos-modules/relay-connector.nix;
        default = withOverlay ./nixos-modules;
      };

      checks = forAllSystems (pkgs:
        let
          p = relayPackages pkgs;
          cargoCheck = name: nativeBuildInputs: buildPhase: pkgs.rustPlatform.buildRustPackage {
            pname = "relay-${name}";
            inherit version src nativeBuildInputs buildPhase;
            cargoLock.lockFile = ./Cargo.lock;
            doCheck = false;
            installPhase = "touch $out";
          };
          vmTest = file: import file { inherit pkgs; relayModules = self.nixosModules; };
        in
        {
          # Tests that need PostgreSQL or RabbitMQ skip themselves here; the VM tests below
          # cover the deployed topology. A debug build: the release profile's fat LTO would
          # build every test binary twice as slowly, for nothing.
          cargo-test = pkgs.rustPlatform.buildRustPackage {
            pname = "relay-cargo-test";
            inherit version src;
            cargoLock.lockFile = ./Cargo.lock;
            buildType = "debug";
            checkType = "debug";
            cargoBuildFlags = [ "--workspace" ];
            cargoTestFlags = [ "--workspace" ];
            # These compare the Debian package's unit with nixos-modules/hardening.nix through
            # nix-instantiate, which the build sandbox does not have; scripts/test runs them.
            checkFlags = [
              "--skip=unit::packaged_unit_has_the_nixos_hardening"
              "--skip=unit::drift_is_found_in_either_file"
            ];
            # Nothing to install. cargoInstallHook's post-build copy of the debug target
            # directory is skipped whenever installPhase is set (cargo-install-hook.sh); say
            # so outright rather than rely on that condition.
            dontCargoInstall = true;
            installPhase = "touch $out";
          };
          clippy = cargoCheck "clippy" [ pkgs.clippy ] ''
            cargo clippy --workspace --all-targets --locked --offline -- -D warnings
          '';
          fmt = cargoCheck "fmt" [ pkgs.rustfmt ] ''
            cargo fmt --all --check
          '';
          nix-lint = pkgs.runCommand "relay-nix-lint"
            { nativeBuildInputs = [ pkgs.deadnix pkgs.nixpkgs-fmt ]; } ''
            cd ${self}
            deadnix --fail .
            nixpkgs-fmt --check .
            touch $out
          '';
          vm-single-node = vmTest ./tests/single-node.nix;
          vm-single-host = vmTest ./tests/single-host.nix;
          vm-multi-node = vmTest ./tests/multi-node.nix;
          vm-image = import ./tests/image.nix {
            inherit pkgs;
            images = import ./oci { inherit pkgs version; packages = p; };
          };
        });

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          packages = with pkgs; [
            cargo
            rustc
            clippy
            rustfmt
            rust-analyzer
            postgresql
            rabbitmq-server
            nixpkgs-fmt
            deadnix
          ];
        };
      });

      apps = forAllSystems (pkgs: {
        dev = {
          type = "app";
          program = toString (pkgs.writeShellScript "relay-dev" ''
            exec ${lib.getExe self.packages.${pkgs.stdenv.hostPlatform.system}.relay-server} --dev "$@"
          '');
          meta.description = "relay-server --dev: embedded store, token service, demo tenant and connector";
        };
      });
    };
}
