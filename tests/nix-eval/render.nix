# Unit file text of an evaluated `systemd.services.<name>`, laid out as NixOS writes it
# (nixos/lib/systemd-lib.nix serviceToUnit): [Unit] from unitConfig, [Service] with one
# quoted Environment= line per variable, X-RestartIfChanged/X-StopIfChanged when turned
# off, then serviceConfig; [Install] WantedBy= from wantedBy. A list becomes one line per
# element, a boolean true/false, anything else its toString.
{ lib }:

let
  value = v: if v == true then "true" else if v == false then "false" else toString v;

  section = attrs: lib.concatStrings (lib.concatLists (lib.mapAttrsToList
    (key: v: map (x: "${key}=${value x}\n") (lib.toList v))
    attrs));
in
globalEnvironment: service:
let
  env = globalEnvironment // service.environment;
  environment = lib.concatMapStrings
    (n: lib.optionalString (env.${n} != null) "Environment=${builtins.toJSON "${n}=${env.${n}}"}\n")
    (builtins.attrNames env);
  changeFlags =
    if service.reloadIfChanged then "X-ReloadIfChanged=true\n"
    else if !service.restartIfChanged then "X-RestartIfChanged=false\n"
    else "";
in
''
  [Unit]
  ${section service.unitConfig}
  [Service]
''
+ environment
+ changeFlags
+ lib.optionalString (!service.stopIfChanged) "X-StopIfChanged=false\n"
+ section service.serviceConfig
  + lib.optionalString (service.wantedBy != [ ]) ''

  [Install]
  WantedBy=${lib.concatStringsSep " " service.wantedBy}
''
