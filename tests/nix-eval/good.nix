# Every case of cases.nix evaluated (or the one named `only`), as JSON for ./run.
# `docs` is the file ./run writes: a list of { name, file } for the docs' examples.
{ nixpkgsLib, docs ? null, only ? null }:

let
  lib = import nixpkgsLib;
  evalCase = import ./eval.nix { inherit lib; };
  cases = import ./cases.nix {
    inherit lib;
    docs = if docs == null then [ ] else import docs;
  };
in
if only == null then builtins.mapAttrs (_: evalCase) cases
else { ${only} = evalCase cases.${only}; }
