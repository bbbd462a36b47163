# The stand-in `nixpkgs` input that tests/nix-flake/run puts in place of the pinned one
# (`--override-input nixpkgs path:…`): nixpkgs' real lib (copied in as ./lib at run time)
# and, for each system the flake builds for, stand-in packages that check argument names.
{
  description = "Stand-in nixpkgs: real lib, argument-checking stand-in packages";

  outputs = { self }:
    let
      # As nixpkgs' flake does: lib.version carries the source's date and revision.
      versioned = lib0:
        if builtins.pathExists ./lib/flake-version-info.nix
        then lib0.extend (import ./lib/flake-version-info.nix self) else lib0;
      lib = (versioned (import ./lib)).extend (import ./lib-compat.nix);
    in
    {
      inherit lib;
      legacyPackages = lib.genAttrs [ "x86_64-linux" "aarch64-linux" ]
        (system: import ./pkgs.nix { inherit lib system; });
    };
}
