# `systemd.services` as NixOS declares it (nixos/lib/systemd-unit-options.nix and
# systemd-lib.nix): the same option names and types, the same merging of unit options
# (lists concatenate, other values must agree), the same checks of Type= and Restart=, and
# `script`/`preStart`/`path` turned into ExecStart=/ExecStartPre=/PATH the same way.
# render.nix turns the result into unit file text.
{ lib, pkgs, ... }:

let
  inherit (lib) mkOption types;

  unitNameType = types.strMatching
    "[a-zA-Z0-9@%:_.\\-]+[.](service|socket|device|mount|automount|swap|target|path|timer|scope|slice)";

  # One key of a unit section: repeated keys as lists (concatenated across definitions),
  # anything else defined once or identically.
  unitOption = lib.mkOptionType {
    name = "systemd option";
    # What `toString` can write (NixOS leaves this to the rendering, which then fails).
    check = v: v == null || builtins.isBool v || builtins.isInt v || builtins.isFloat v || builtins.isString v
      || builtins.isPath v || lib.isDerivation v || builtins.isList v;
    merge = loc: defs:
      let defs' = lib.filterOverrides defs;
      in
      if lib.any (def: builtins.isList def.value) defs'
      then lib.concatMap (def: lib.toList def.value) defs'
      else lib.mergeEqualOption loc defs';
  };

  # The values NixOS accepts for Type= and Restart= (checkService in systemd-unit-options.nix).
  oneOf = key: allowed: attrs:
    lib.optional (attrs ? ${key} && !(lib.elem attrs.${key} allowed))
      "Systemd Service field `${key}' cannot have value `${toString attrs.${key}}'.";
  checkService = attrs:
    let
      plain = lib.mapAttrs (_: v: if lib.elem (v._type or "") [ "override" "if" ] then v.content else v) attrs;
      errors = oneOf "Type" [ "exec" "simple" "forking" "oneshot" "dbus" "notify" "notify-reload" "idle" ] plain
        ++ oneOf "Restart" [ "no" "on-success" "on-failure" "on-abnormal" "on-abort" "always" ] plain;
    in
    if errors == [ ] then true else builtins.trace (lib.concatStringsSep "\n" errors) false;

  units = mkOption {
    type = types.listOf unitNameType;
    default = [ ];
  };
  lines = mkOption {
    type = types.lines;
    default = "";
  };
  section = mkOption {
    type = types.attrsOf unitOption;
    default = { };
  };

  # As makeJobScript: a script derivation whose bin/ program runs the text under `set -e`.
  jobScript = name: text: lib.getExe (pkgs.writeShellScriptBin
    (builtins.replaceStrings [ "\\" "@" ] [ "-" "_" ] name) ''
    set -e

    ${text}
  '');

  serviceModule = { name, config, options, ... }: {
    options = {
      enable = mkOption {
        type = types.bool;
        default = true;
      };
      name = mkOption {
        type = types.str;
        default = "${name}.service";
      };
      description = mkOption {
        type = types.singleLineStr;
        default = "";
      };
      documentation = mkOption {
        type = types.listOf types.str;
        default = [ ];
      };
      requires = units;
      wants = units;
      upholds = units;
      after = units;
      before = units;
      bindsTo = units;
      partOf = units;
      conflicts = units;
      requisite = units;
      onFailure = units;
      onSuccess = units;
      wantedBy = units;
      requiredBy = units;
      upheldBy = units;
      aliases = units;
      unitConfig = section;
      serviceConfig = mkOption {
        type = types.addCheck (types.attrsOf unitOption) checkService;
        default = { };
      };
      startLimitBurst = mkOption { type = types.int; };
      startLimitIntervalSec = mkOption { type = types.int; };
      restartTriggers = mkOption {
        type = types.listOf types.unspecified;
        default = [ ];
      };
      reloadTriggers = mkOption {
        type = types.listOf unitOption;
        default = [ ];
      };
      environment = mkOption {
        type = types.attrsOf (types.nullOr (types.oneOf [ types.str types.path types.package ]));
        default = { };
      };
      path = mkOption {
        type = types.listOf (types.oneOf [ types.package types.str ]);
        default = [ ];
      };
      script = lines;
      scriptArgs = mkOption {
        type = types.str;
        default = "";
      };
      preStart = lines;
      postStart = lines;
      reload = lines;
      preStop = lines;
      postStop = lines;
      restartIfChanged = mkOption {
        type = types.bool;
        default = true;
      };
      reloadIfChanged = mkOption {
        type = types.bool;
        default = false;
      };
      stopIfChanged = mkOption {
        type = types.bool;
        default = true;
      };
      startAt = mkOption {
        type = types.either types.str (types.listOf types.str);
        default = [ ];
        apply = lib.toList;
      };
    };

    config = lib.mkMerge [
      {
        # The [Unit] keys NixOS derives from the typed options (systemd-lib.nix unitConfig).
        unitConfig =
          let
            joined = key: list: lib.optionalAttrs (list != [ ]) { ${key} = toString list; };
          in
          joined "Requires" config.requires
          // joined "Wants" config.wants
          // joined "Upholds" config.upholds
          // joined "After" config.after
          // joined "Before" config.before
          // joined "BindsTo" config.bindsTo
          // joined "PartOf" config.partOf
          // joined "Conflicts" config.conflicts
          // joined "Requisite" config.requisite
          // joined "Documentation" config.documentation
          // joined "OnFailure" config.onFailure
          // joined "OnSuccess" config.onSuccess
          // lib.optionalAttrs (config.restartTriggers != [ ]) {
            X-Restart-Triggers = "${pkgs.writeText "X-Restart-Triggers-${name}"
              (toString (map (x: if builtins.isPath x then "${x}" else x) (lib.flatten config.restartTriggers)))}";
          }
          // lib.optionalAttrs (config.description != "") { Description = config.description; }
          // lib.optionalAttrs options.startLimitIntervalSec.isDefined {
            StartLimitIntervalSec = toString config.startLimitIntervalSec;
          }
          // lib.optionalAttrs options.startLimitBurst.isDefined {
            StartLimitBurst = toString config.startLimitBurst;
          };
        # The default path of every stage-2 service.
        path = lib.mkAfter [ pkgs.coreutils pkgs.findutils pkgs.gnugrep pkgs.gnused pkgs.systemd ];
        environment.PATH = lib.mkIf (config.path != [ ])
          "${lib.makeBinPath config.path}:${lib.makeSearchPathOutput "bin" "sbin" config.path}";
      }
      (lib.mkIf (config.preStart != "") {
        serviceConfig.ExecStartPre = [ (jobScript "${name}-pre-start" config.preStart) ];
      })
      (lib.mkIf (config.script != "") {
        serviceConfig.ExecStart = jobScript "${name}-start" config.script + " " + config.scriptArgs;
      })
      (lib.mkIf (config.postStart != "") {
        serviceConfig.ExecStartPost = [ (jobScript "${name}-post-start" config.postStart) ];
      })
      (lib.mkIf (config.reload != "") {
        serviceConfig.ExecReload = jobScript "${name}-reload" config.reload;
      })
      (lib.mkIf (config.preStop != "") {
        serviceConfig.ExecStop = jobScript "${name}-pre-stop" config.preStop;
      })
      (lib.mkIf (config.postStop != "") {
        serviceConfig.ExecStopPost = jobScript "${name}-post-stop" config.postStop;
      })
    ];
  };
in
{
  options.systemd = {
    services = mkOption {
      type = types.attrsOf (types.submodule serviceModule);
      default = { };
      description = "Definition of systemd service units.";
    };

    globalEnvironment = mkOption {
      type = types.attrsOf (types.nullOr (types.oneOf [ types.str types.path types.package ]));
      default = { };
      description = "Environment variables passed to all systemd units.";
    };

    tmpfiles.rules = mkOption {
      type = types.listOf types.str;
      default = [ ];
      description = "Rules for creation, deletion and cleaning of volatile and temporary files.";
    };

    # Not in NixOS: units some other module of the host provides (postgresql.target when
    # services.postgresql is on, …). render.nix gives the verifier a stand-in for each, and
    # a Requires= on a unit nobody provides fails the case.
    providedUnits = mkOption {
      type = types.listOf unitNameType;
      internal = true;
      default = [ ];
    };
  };

  config.systemd.providedUnits = [
    "multi-user.target"
    "network.target"
    "network-online.target"
    "local-fs.target"
    "remote-fs.target"
    "basic.target"
    "sysinit.target"
  ];
}
