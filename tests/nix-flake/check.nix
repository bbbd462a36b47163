# Argument checks shared by the stand-ins. Each returns its value unchanged or throws a
# message that starts with the function's name, e.g.
#   buildLayeredImage: unknown argument `contens` (did you mean `contents`?)
{ lib }:

let
  inherit (lib) attrNames concatMapStringsSep concatStringsSep filter subtractLists;

  nearest = accepted: name:
    let
      close = filter (a: lib.strings.levenshteinAtMost 3 a name) accepted;
      sorted = lib.sort (a: b: lib.strings.levenshtein a name < lib.strings.levenshtein b name) close;
    in
    if sorted == [ ] then "" else " (did you mean `${lib.head sorted}`?)";

  plural = n: word: if n == 1 then word else "${word}s";
in
rec {
  # Every attribute name of `args` is in `accepted`.
  names = fn: what: accepted: args:
    let
      unknown = subtractLists accepted (attrNames args);
    in
    if unknown == [ ] then args
    else
      throw "${fn}: unknown ${plural (lib.length unknown) what} ${
        concatMapStringsSep ", " (n: "`${n}`${nearest accepted n}") unknown}";

  arguments = fn: names fn "argument";

  # `args` has every name in `required`.
  required = fn: needed: args:
    let
      missing = filter (n: !(args ? ${n})) needed;
    in
    if missing == [ ] then args
    else
      throw "${fn}: missing ${plural (lib.length missing) "argument"} ${
      concatMapStringsSep ", " (n: "`${n}`") missing}";

  # Throws the first failed check; `checks` is a list of { ok, message }.
  all = fn: checks: value:
    let
      failed = filter (c: !c.ok) checks;
    in
    if failed == [ ] then value else throw "${fn}: ${(lib.head failed).message}";

  type = fn: what: pred: expected: value:
    if pred value then value
    else throw "${fn}: ${what} must be ${expected}, not ${builtins.typeOf value}";

  # What a derivation's dependency lists may hold (mkDerivation's checkDependencyList).
  dependency = dep:
    lib.isDerivation dep || dep == null || builtins.isString dep || builtins.isPath dep
    || (builtins.isList dep && lib.all dependency dep);

  dependencies = fn: lists: args:
    let
      bad = lib.concatMap
        (list:
          lib.imap1 (i: dep: { inherit list i; ok = dependency dep; }) (args.${list} or [ ]))
        lists;
      failed = filter (b: !b.ok) bad;
    in
    if failed == [ ] then args
    else
      throw "${fn}: Dependency is not of a valid type: ${
        concatStringsSep ", " (map (b: "element ${toString b.i} of ${b.list}") failed)}";
}
