# lib overlay for the stand-in nixpkgs input. nixpkgs 25.11's lib wants Nix 2.18; the
# Nix here (Debian's) is older and lacks builtins.readFileType, which lib.fileset needs
# (through lib.filesystem.pathType). The fallback reads the parent directory's listing, as
# lib did before that builtin; for a store path itself (a flake's source), whose parent
# pure evaluation may not list, a directory is what has a "PATH/" (Nix 2.8's pathExists).
_final: prev:

let
  fallback = path:
    let
      parent = dirOf path;
    in
    if parent == path then "directory"
    else if !builtins.pathExists path then throw "lib.filesystem.pathType: path ${toString path} does not exist."
    else if toString parent == builtins.storeDir then
      (if builtins.pathExists "${toString path}/" then "directory" else "regular")
    else (builtins.readDir parent).${baseNameOf path};
  pathType = builtins.readFileType or fallback;
in
{
  inherit pathType;
  filesystem = prev.filesystem // { inherit pathType; };
}
