# Every Relay module; each service stays off until its `enable` is set.
{
  imports = [
    ./relay-server.nix
    ./relay-identity.nix
    ./relay-management.nix
    ./relay-connector.nix
  ];
}
