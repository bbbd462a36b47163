# The systemd sandbox of every Relay unit: the NixOS modules use it as serviceConfig, and
# packaging/ checks the Debian package's unit against it (same keys, same values), so the
# two cannot drift. A plain attribute set: `nix-instantiate --eval --strict --json` reads it.
{
  DynamicUser = true;
  UMask = "0077";
  NoNewPrivileges = true;
  ProtectSystem = "strict";
  ProtectHome = true;
  PrivateTmp = true;
  PrivateDevices = true;
  PrivateUsers = true;
  ProtectHostname = true;
  ProtectClock = true;
  ProtectKernelTunables = true;
  ProtectKernelModules = true;
  ProtectKernelLogs = true;
  ProtectControlGroups = true;
  ProtectProc = "invisible";
  # No ProcSubset=pid: the connector reads /proc/sys/kernel/hostname for machine_name.
  RestrictAddressFamilies = [ "AF_INET" "AF_INET6" "AF_UNIX" ];
  RestrictNamespaces = true;
  RestrictRealtime = true;
  RestrictSUIDSGID = true;
  RemoveIPC = true;
  LockPersonality = true;
  MemoryDenyWriteExecute = true;
  SystemCallArchitectures = "native";
  SystemCallFilter = [ "@system-service" "~@privileged" ];
  SystemCallErrorNumber = "EPERM";
  CapabilityBoundingSet = "";
  AmbientCapabilities = "";
  DevicePolicy = "closed";
  KeyringMode = "private";
}
