# Stand-in testers.runNixOSTest. The test is a module evaluated against the options of
# nixpkgs' test framework (nixos/lib/testing/*.nix, 25.11), so a misspelt top-level option
# fails as in nixpkgs. Each node is a module evaluation of its own: the Relay modules with
# their real options (so nothing undeclared under services.relay), `nixpkgs.overlays` as
# nixpkgs has it (read-only unless `node.pkgsReadOnly = false`), the options the VM tests
# set on PostgreSQL, RabbitMQ, NFS, fileSystems, systemd and virtualisation with their 25.11
# names and types (tests/nix-eval/stubs, copied next to this file as ./nixos-stubs, and
# `virtualisation` below), and everything else NixOS declares as loose stand-ins; failed
# assertions fail. The test's derivation holds the
# test script and each node's rendered systemd, environment, networking, users, services
# and system.checks, so instantiating it evaluates all of them.
{ lib, make, hostPkgs }:

testModule:
let
  inherit (lib) mkOption types;

  # What a NixOS system builds from its configuration, so what the stand-in evaluates.
  rendered = [ "systemd" "environment" "networking" "users" "services" "system" "fileSystems" "virtualisation" "security" "boot" ];

  # NixOS's top-level option namespaces and services (a stand-in each, see `loose`). The
  # module system rejects anything else, as NixOS does a misspelt name; a real NixOS
  # option the project starts to use goes here. (Not a freeform type: the Relay modules'
  # options depend on their config, which a freeform root would make recursive.)
  namespaces = [
    "boot"
    "console"
    "containers"
    "documentation"
    "environment"
    "fonts"
    "hardware"
    "i18n"
    "lib"
    "meta"
    "networking"
    "nix"
    "powerManagement"
    "programs"
    "security"
    "specialisation"
    "swapDevices"
    "system"
    "time"
    "users"
    "xdg"
    "zramSwap"
  ];
  services = [
    "acme-dns"
    "caddy"
    "chrony"
    "cron"
    "dbus"
    "dnsmasq"
    "envoy"
    "fail2ban"
    "getty"
    "grafana"
    "haproxy"
    "httpd"
    "journald"
    "logrotate"
    "loki"
    "minio"
    "mysql"
    "nginx"
    "openssh"
    "prometheus"
    "qemuGuest"
    "redis"
    "resolved"
    "rpcbind"
    "tailscale"
    "timesyncd"
    "traefik"
    "udev"
    "vault"
    "xserver"
  ];

  option = type: default: mkOption { inherit type default; };
  raw = mkOption { type = types.raw; };

  # A NixOS option this stand-in does not model: attribute sets merge, lists concatenate,
  # different strings join as lines, anything else must agree.
  loose = lib.mkOptionType {
    name = "stand-in";
    description = "anything (a stand-in for a NixOS option)";
    merge = loc: defs:
      let
        values = map (d: d.value) defs;
        every = pred: lib.all pred values;
      in
      if every (v: builtins.isAttrs v && !lib.isDerivation v) then (types.attrsOf loose).merge loc defs
      else if every builtins.isList then lib.concatLists values
      else if every builtins.isString then lib.concatStringsSep "\n" (lib.unique values)
      else lib.mergeEqualOption loc defs;
  };

  overlayType = lib.mkOptionType {
    name = "nixpkgs-overlay";
    description = "nixpkgs overlay";
    check = lib.isFunction;
    merge = lib.mergeOneOption;
  };

  # What the VM tests set under `virtualisation` (virtualisation/qemu-vm.nix and docker.nix,
  # 25.11); `fileSystems` there has the type of the top-level `fileSystems`.
  virtualisation = { options, ... }: {
    options.virtualisation = {
      memorySize = option types.ints.positive 1024;
      diskSize = option (types.nullOr types.ints.positive) 1024;
      fileSystems = option options.fileSystems.type { };
      docker.enable = option types.bool false;
    };
  };

  # The part of NixOS every node gets.
  nixos = { readOnly, nodes }: { config, name, ... }: {
    imports = [ ./nixos-stubs/systemd.nix ./nixos-stubs/services.nix virtualisation ];
    options = lib.genAttrs namespaces (_: option loose { }) // {
      services = lib.genAttrs services (_: option loose { });
      assertions = option (types.listOf types.unspecified) [ ];
      warnings = option (types.listOf types.str) [ ];
      nixpkgs = lib.genAttrs [ "config" "system" "hostPlatform" "buildPlatform" "localSystem" "crossSystem" "pkgs" ]
        (_: option loose { }) // {
        overlays =
          if readOnly then mkOption { type = types.unique { message = "nixpkgs.overlays is set to read-only"; } types.anything; }
          else option (types.listOf overlayType) [ ];
      };
    };
    config = {
      _module.args = {
        inherit nodes;
        pkgs =
          if readOnly then builtins.seq config.nixpkgs.overlays hostPkgs
          else hostPkgs.appendOverlays config.nixpkgs.overlays;
      };
      nixpkgs.overlays = lib.mkIf readOnly hostPkgs.overlays;
      networking.hostName = lib.mkDefault name;
    };
  };

  # A node's configuration, checked the way NixOS would fail on it, reduced to JSON.
  render = testName: nodeName: node:
    let
      where = "node `${nodeName}` of test `${testName}`";
      failed = map (a: a.message) (lib.filter (a: !a.assertion) node.config.assertions);
      plain = v:
        if lib.isDerivation v then v
        else if builtins.isFunction v then "<function>"
        else if builtins.isAttrs v then lib.mapAttrs (_: plain) v
        else if builtins.isList v then map plain v
        else v;
      shown = lib.filterAttrs (n: _: lib.elem n rendered) node.config // {
        services = removeAttrs (node.config.services or { }) [ "relay" ];
        # Options without a default that are unset; when set, unitConfig holds them.
        systemd = node.config.systemd // {
          services = lib.mapAttrs (_: s: removeAttrs s [ "startLimitBurst" "startLimitIntervalSec" ]) node.config.systemd.services;
        };
      };
    in
    if failed != [ ] then
      throw "\nFailed assertions (${where}):\n${lib.concatMapStrings (m: "- ${m}\n") failed}"
    else lib.foldr lib.warn (plain shown) node.config.warnings;

  # Each node evaluated as NixOS evaluates it: the node's modules, `defaults` and
  # `extraBaseModules` on top of the stand-in NixOS.
  evalNode = test: name: module: lib.evalModules {
    class = "nixos";
    inherit (test.node) specialArgs;
    modules = [
      (nixos { readOnly = test.node.pkgsReadOnly; nodes = nodeConfigs; })
      { _module.args.name = name; }
      test.defaults
      test.extraBaseModules
      module
    ];
  };
  nodeEvals = lib.mapAttrs (evalNode test) test.nodes;
  nodeConfigs = lib.mapAttrs (_: e: e.config) nodeEvals;

  framework = { config, options, ... }: {
    options = {
      name = mkOption { type = types.str; };
      nodes = option (types.lazyAttrsOf types.deferredModule) { };
      defaults = option types.deferredModule { };
      extraBaseModules = option types.deferredModule { };
      node = {
        type = raw;
        pkgs = option (types.nullOr types.raw) null;
        pkgsReadOnly = option types.bool (config.node.pkgs != null);
        specialArgs = option (types.lazyAttrsOf types.raw) { };
      };
      nodesCompat = raw;
      sshBackdoor.enable = option types.bool false;
      sshBackdoor.vsockOffset = option types.int 2;
      driver = raw;
      hostPkgs = raw;
      qemu.package = option types.raw null;
      globalTimeout = option types.int 3600;
      enableOCR = option types.bool false;
      extraPythonPackages = option (types.functionTo (types.listOf types.package)) (_: [ ]);
      extraDriverArgs = option (types.listOf types.str) [ ];
      skipLint = option types.bool false;
      skipTypeCheck = option types.bool false;
      passthru = option (types.lazyAttrsOf types.raw) { };
      enableDebugHook = option types.bool false;
      rawTestDerivation = raw;
      rawTestDerivationArg = raw;
      test = raw;
      result = raw;
      testScript = mkOption { type = types.either types.str (types.functionTo types.str); };
      includeTestScriptReferences = option types.bool true;
      withoutTestScriptReferences = raw;
      interactive = option types.deferredModule { };
      meta = option
        (types.submodule {
          options = {
            maintainers = option (types.listOf types.raw) [ ];
            timeout = option (types.nullOr types.int) 3600;
            broken = option types.bool false;
          };
        })
        { };
      machine = raw;
    };
    config = {
      # What pkgs.testers.runNixOSTest sets.
      hostPkgs = hostPkgs;
      node.pkgs = hostPkgs;
      _module.args = {
        inherit (config) hostPkgs;
        nodes = nodeConfigs;
        pkgs = config.hostPkgs;
      };
      nodes = lib.mkIf options.machine.isDefined (lib.warn
        "In test `${config.name}': The `machine' attribute in NixOS tests is deprecated. Please set the equivalent `nodes.machine'."
        { inherit (config) machine; });
    };
  };

  test = (lib.evalModules {
    class = "nixosTest";
    modules = [
      framework
      (lib.setDefaultModuleLocation "the argument that was passed to pkgs.runNixOSTest" testModule)
    ];
  }).config;
in
make { fn = "runNixOSTest"; accepted = null; } {
  name = "vm-test-run-${test.name}";
  testScript = if lib.isFunction test.testScript then test.testScript { nodes = nodeConfigs; } else test.testScript;
  nodes = builtins.toJSON (lib.mapAttrs (render test.name) nodeEvals);
  requiredSystemFeatures = [ "nixos-test" "kvm" ];
  meta = lib.filterAttrs (_: v: v != null) test.meta;
  passthru = test.passthru // { nodes = nodeConfigs; config = test; };
}
