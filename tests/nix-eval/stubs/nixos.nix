# The NixOS options the Relay modules and the examples in docs/deployment.md use, declared
# with the types nixpkgs gives them (nixos/modules/misc/assertions.nix,
# system/activation/top-level.nix, misc/nixpkgs.nix, services/networking/firewall.nix;
# systemd in systemd.nix, PostgreSQL, RabbitMQ, NFS and fileSystems in services.nix).
# An option missing here fails the evaluation with "The option `…' does not exist".
{ lib, ... }:

let
  inherit (lib) mkOption types;

  overlayType = lib.mkOptionType {
    name = "nixpkgs-overlay";
    description = "nixpkgs overlay";
    check = lib.isFunction;
    merge = lib.mergeOneOption;
  };
in
{
  imports = [ ./systemd.nix ./services.nix ];

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
  };
}
