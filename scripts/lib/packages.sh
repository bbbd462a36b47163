# shellcheck shell=bash disable=SC2154 # $check is set by the script that sources this
# Shared by scripts/check-deb and scripts/check-rpm (sourced, not run): tools, the binary to
# package, the unit check and the operator's files. Expects `set -euo pipefail`, the
# repository root as the working directory and `$check` set to the script's name.

tools_root="${RELAY_TOOLS_ROOT:-${XDG_CACHE_HOME:-$HOME/.cache}/relay-tools}"
export PATH="$tools_root/bin:$PATH"

fail() {
    echo "$check: $*" >&2
    exit 1
}

# `apt_install COMMAND PACKAGE`: installs Debian's PACKAGE when COMMAND is missing (as root).
apt_install() {
    command -v "$1" >/dev/null && return 0
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
        echo "$check: installing $2 ($1)" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$2" >&2 \
            || { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$2" >&2; }
    else
        fail "$1 not found; install $2 (apt-get install $2)"
    fi
}

# `cargo_tool COMMAND CRATE VERSION`: installs a cargo subcommand into the tools cache once.
cargo_tool() {
    command -v "$1" >/dev/null && return 0
    echo "$check: installing $2 $3 into $tools_root (once)" >&2
    cargo install --locked --root "$tools_root" "$2@$3" >&2
}

# `debug_binary DIR`: the debug relay-connector that `cargo test --workspace` builds anyway
# (same flags as scripts/test, so nothing is built twice), as DIR/target/release/relay-connector,
# where the packagers look for it: the checks are about the packaging, not the optimiser.
debug_binary() {
    CARGO_INCREMENTAL=0 cargo build --locked -p relay-connector --bin relay-connector >&2
    mkdir -p "$1/target/release"
    cp "${CARGO_TARGET_DIR:-target}/debug/relay-connector" "$1/target/release/"
}

# `verify_unit ROOT`: `systemd-analyze verify relay-connector@acme.service` against the
# package's files in ROOT, with the host's units (sysinit.target and the rest) beside them,
# must print nothing; and the packaged binary must run.
verify_unit() {
    mkdir -p "$1/usr/lib/systemd/system"
    cp -an /usr/lib/systemd/system/. "$1/usr/lib/systemd/system/"
    local out
    out="$(systemd-analyze verify --root="$1" relay-connector@acme.service 2>&1)" \
        || fail "systemd-analyze verify failed:
$out"
    [ -z "$out" ] || fail "systemd-analyze verify warns:
$out"
    "$1/usr/bin/relay-connector" --version >/dev/null || fail "the packaged binary does not run"
}

# `operator_setup ROOT`: an instance `acme` written into ROOT/etc/relay-connector by the
# installed package's own helper, and a line of the operator's own in example.toml.
operator_setup() {
    local etc="$1/etc/relay-connector"
    echo s3cret | "$1/usr/bin/relay-connector" setup acme --config-dir "$etc" \
        --relay-url https://relay.example.com --target web=http://127.0.0.1:8080 >&2 \
        || fail "relay-connector setup acme failed in the installed package"
    [ "$(stat -c %a "$etc/acme.secret")" = 600 ] || fail "acme.secret is not mode 0600"
    echo "# the operator's note" >>"$etc/example.toml"
}

# `operator_files ROOT`: what must survive upgrades and removal, as checksums.
operator_files() {
    (cd "$1/etc/relay-connector" && sha256sum acme.toml acme.secret 2>/dev/null) || true
}
