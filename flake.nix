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

      # Only what cargo needs; examples/ is read by the config tests.
      src = lib.fileset.toSource {
        root = ./.;
        fileset = lib.fileset.unions [ ./Cargo.toml ./Cargo.lock ./crates ./examples ];
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

      # Each module gets its package from this flake unless the configuration sets one.
      withPackages = file: { pkgs, ... }:
        let own = self.packages.${pkgs.stdenv.hostPlatform.system};
        in {
          imports = [ file ];
          config.services.relay.packages = lib.mkDefault {
            inherit (own) relay-server relay-identity relay-management relay-connector relayctl;
          };
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

      nixosModules = {
        relay-server = withPackages ./nixos-modules/relay-server.nix;
        relay-identity = withPackages ./nixos-modules/relay-identity.nix;
        relay-management = withPackages ./nixos-modules/relay-management.nix;
        relay-connector = withPackages ./nixos-modules/relay-connector.nix;
        default = withPackages ./nixos-modules;
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
          vmTest = file: import file { inherit pkgs; relayModule = self.nixosModules.default; };
        in
        {
          # Tests that need PostgreSQL or RabbitMQ skip themselves here; the VM tests below
          # cover the deployed topology.
          cargo-test = p.workspace.overrideAttrs {
            pname = "relay-cargo-test";
            doCheck = true;
            cargoBuildFlags = [ "--workspace" ];
            cargoTestFlags = [ "--workspace" ];
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
