# The NixOS options the Relay modules and the examples in docs/deployment.md use, declared
# with the types nixpkgs gives them (nixos/modules/misc/assertions.nix,
# system/activation/top-level.nix, misc/nixpkgs.nix, services/networking/firewall.nix,
# services/databases/postgresql.nix, services/amqp/rabbitmq.nix, tasks/filesystems.nix,
# services/network-filesystems/nfsd.nix), with the few consequences the Relay units depend
# on: which units the host then has, and postgresql's own assertion on ensureDBOwnership.
# An option missing here fails the evaluation with "The option `…' does not exist".
{ config, lib, pkgs, ... }:

let
  inherit (lib) mkOption types;
  pg = config.services.postgresql;
  mq = config.services.rabbitmq;

  overlayType = lib.mkOptionType {
    name = "nixpkgs-overlay";
    description = "nixpkgs overlay";
    check = lib.isFunction;
    merge = lib.mergeOneOption;
  };
in
{
  imports = [ ./systemd.nix ];

  options = {
    assertions = mkOption {
      type = types.listOf types.unspecified;
      internal = true;
      default = [ ];
      description = "Conditions that must hold; a false one stops the build with its message.";
    };

    warnings = mkOption {
      type = types.listOf types.str;
      internal = true;
      default = [ ];
      description = "Messages shown while the system is built.";
    };

    system.checks = mkOption {
      type = types.listOf types.package;
      default = [ ];
      description = "Packages that are built with the system (and must build).";
    };

    nixpkgs.overlays = mkOption {
      type = types.listOf overlayType;
      default = [ ];
      description = "Overlays applied to the host's package set.";
    };

    environment.systemPackages = mkOption {
      type = types.listOf types.package;
      default = [ ];
      description = "Packages installed in the system profile.";
    };

    networking.firewall = {
      allowedTCPPorts = mkOption {
        type = types.listOf types.port;
        default = [ ];
        description = "TCP ports open in the firewall.";
      };
      allowedUDPPorts = mkOption {
        type = types.listOf types.port;
        default = [ ];
        description = "UDP ports open in the firewall.";
      };
    };

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
