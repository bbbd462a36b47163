# With `case = null`: every bad case's expected error texts, as JSON for ./run. With a
# case name: that case evaluated in full (all of nixos-modules/ imported, as most hosts
# do), which must fail.
{ nixpkgsLib, case ? null }:

let
  lib = import nixpkgsLib;
  cases = import ./bad-cases.nix { inherit lib; };
in
if case == null then builtins.mapAttrs (_: c: c.expect) cases
else
  import ./eval.nix { inherit lib; } {
    modules = [ ../../nixos-modules cases.${case}.config ];
  }
