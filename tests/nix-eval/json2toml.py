"""JSON on stdin -> TOML on stdout, for the configuration values tests/nix-eval/run hands
to each binary's check-config (what remarshal's json2toml does on a NixOS build).
Tables after plain keys, arrays of tables as [[name]]; no null (TOML has none)."""

import json
import re
import sys


def key(k):
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else json.dumps(k)


def scalar(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list):
        return "[" + ", ".join(scalar(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{key(k)} = {scalar(x)}" for k, x in v.items()) + " }"
    raise ValueError(f"not representable in TOML: {v!r}")


def is_table_array(v):
    return isinstance(v, list) and v and all(isinstance(x, dict) for x in v)


def table(path, d, out):
    plain = {k: v for k, v in d.items() if not isinstance(v, dict) and not is_table_array(v)}
    nested = {k: v for k, v in d.items() if k not in plain}
    if path and (plain or not nested):
        out.append(f"\n[{'.'.join(map(key, path))}]")
    for k, v in plain.items():
        out.append(f"{key(k)} = {scalar(v)}")
    for k, v in nested.items():
        if isinstance(v, dict):
            table(path + [k], v, out)
        else:
            for item in v:
                out.append(f"\n[[{'.'.join(map(key, path + [k]))}]]")
                for ik, iv in item.items():
                    out.append(f"{key(ik)} = {scalar(iv)}")


def main():
    out = []
    table([], json.load(sys.stdin), out)
    sys.stdout.write("\n".join(out).lstrip("\n") + "\n")


if __name__ == "__main__":
    main()
