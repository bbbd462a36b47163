# The NixOS services the Relay modules and the VM tests use (PostgreSQL, RabbitMQ, the NFS
# server) and the file systems, declared with the names and types of nixpkgs 25.11
# (services/databases/postgresql.nix, services/amqp/rabbitmq.nix,
# services/network-filesystems/nfsd.nix, tasks/filesystems.nix), with the few consequences
# the Relay units depend on: which units the host then has, and postgresql's own assertion
# on ensureDBOwnership. Shared by nixos.nix and the stand-in test framework
# (tests/nix-flake/nixos-test.nix), so a misspelt option there fails too.
{ config, lib, pkgs, ... }:

let
  inherit (lib) mkOption types;
  pg = config.services.postgresql;
  mq = config.services.rabbitmq;
in
{
  options = {
    fileSystems = mkOption {
      type = types.attrsOf (types.submodule ({ name, ... }: {
        options = {
          mountPoint = mkOption {
            type = types.nonEmptyStr;
            default = name;
          };
          device = mkOption {
            type = types.nullOr types.nonEmptyStr;
            default = null;
          };
          fsType = mkOption {
            type = types.nonEmptyStr;
            default = "auto";
          };
          options = mkOption {
            type = types.nonEmptyListOf types.nonEmptyStr;
            default = [ "defaults" ];
          };
        };
      }));
      default = { };
      description = "The file systems to be mounted.";
    };

    services.nfs.server = {
      enable = lib.mkEnableOption "the kernel's NFS server";
      exports = mkOption {
        type = types.lines;
        default = "";
        description = "Contents of the /etc/exports file.";
      };
    };

    services.postgresql = {
      enable = lib.mkEnableOption "PostgreSQL Server";
      package = mkOption {
        type = types.package;
        default = pkgs.postgresql;
      };
      dataDir = mkOption {
        type = types.path;
        default = "/var/lib/postgresql/${pg.package.psqlSchema}";
      };
      enableTCPIP = mkOption {
        type = types.bool;
        default = false;
      };
      authentication = mkOption {
        type = types.lines;
        default = "";
      };
      identMap = mkOption {
        type = types.lines;
        default = "";
      };
      ensureDatabases = mkOption {
        type = types.listOf types.str;
        default = [ ];
      };
      ensureUsers = mkOption {
        type = types.listOf (types.submodule {
          options = {
            name = mkOption { type = types.str; };
            ensureDBOwnership = mkOption {
              type = types.bool;
              default = false;
            };
            ensureClauses = mkOption {
              type = types.attrsOf (types.nullOr types.bool);
              default = { };
            };
          };
        });
        default = [ ];
      };
      # 25.11 has the port here; the old top-level `port` is a renamed alias, left out so
      # that nothing here starts to use it.
      settings = mkOption {
        type = types.submodule {
          freeformType = types.attrsOf (types.oneOf [ types.bool types.float types.int types.str ]);
          options.port = mkOption {
            type = types.port;
            default = 5432;
          };
        };
        default = { };
      };
    };

    services.rabbitmq = {
      enable = lib.mkEnableOption "the RabbitMQ server";
      package = mkOption {
        type = types.package;
        default = pkgs.rabbitmq-server;
      };
      listenAddress = mkOption {
        type = types.str;
        default = "127.0.0.1";
      };
      port = mkOption {
        type = types.port;
        default = 5672;
      };
      dataDir = mkOption {
        type = types.path;
        default = "/var/lib/rabbitmq";
      };
    };
  };

  config = lib.mkMerge [
    (lib.mkIf pg.enable {
      # As the postgresql module's own assertion.
      assertions = map
        (user: {
          assertion = user.ensureDBOwnership -> lib.elem user.name pg.ensureDatabases;
          message = "services.postgresql.ensureUsers: ${user.name} has ensureDBOwnership but no database of that name in services.postgresql.ensureDatabases.";
        })
        pg.ensureUsers;
      # postgresql.target is reached once the server runs and ensure* are applied.
      systemd.providedUnits = [ "postgresql.service" "postgresql-setup.service" "postgresql.target" ];
      environment.systemPackages = [ pg.package ];
    })
    (lib.mkIf mq.enable {
      systemd.providedUnits = [ "rabbitmq.service" ];
      environment.systemPackages = [ mq.package ];
    })
    (lib.mkIf config.services.nfs.server.enable {
      systemd.providedUnits = [ "nfs-server.service" ];
    })
  ];
}
