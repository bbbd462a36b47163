//! The packaged systemd unit (packaging/systemd/relay-connector@.service) runs in the same
//! sandbox as the NixOS modules' units: its `[Service]` hardening keys and values equal
//! nixos-modules/hardening.nix, read with `nix-instantiate --eval --strict --json`.
//!
//! NixOS writes a list as one line per element (`SystemCallFilter=@system-service`, then
//! `SystemCallFilter=~@privileged`; a `~` only inverts the line it starts), so the unit must
//! too: a list compares line by line, in order.

use std::process::Command;

use serde_json::{Map, Value};

const UNIT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../packaging/systemd/relay-connector@.service"
);
const HARDENING: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../nixos-modules/hardening.nix"
);

/// `[Service]` keys of the unit that are not part of the sandbox.
const SERVICE_KEYS: &[&str] = &[
    "Type",
    "User",
    "NotifyAccess",
    "WatchdogSec",
    "ExecStart",
    "LoadCredential",
    "Environment",
    "Restart",
    "RestartSec",
    "TimeoutStartSec",
    "TimeoutStopSec",
    "KillSignal",
    "LimitNOFILE",
];

fn hardening() -> Map<String, Value> {
    let output = match Command::new("nix-instantiate")
        .args(["--eval", "--strict", "--json", HARDENING])
        .output()
    {
        Ok(output) => output,
        Err(e) => panic!(
            "nix-instantiate: {e}. It compares the packaged unit with nixos-modules/hardening.nix; \
             install Nix (Debian: apt-get install nix-bin, as scripts/check-nix does)"
        ),
    };
    assert!(
        output.status.success(),
        "nix-instantiate {HARDENING}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    match serde_json::from_slice(&output.stdout) {
        Ok(Value::Object(map)) => map,
        other => panic!("{HARDENING} is not an attribute set: {other:?}"),
    }
}

/// The `Key=value` lines of the `[Service]` section, in order.
fn service_section(unit: &str) -> Vec<(String, String)> {
    let mut in_service = false;
    let mut out = Vec::new();
    for line in unit.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if line.starts_with('[') {
            in_service = line == "[Service]";
            continue;
        }
        assert!(!line.ends_with('\\'), "continued line in the unit: {line}");
        if in_service && let Some((key, value)) = line.split_once('=') {
            out.push((key.trim().to_owned(), value.trim().to_owned()));
        }
    }
    out
}

fn systemd_bool(value: &str) -> Option<bool> {
    match value {
        "yes" | "true" | "on" | "1" => Some(true),
        "no" | "false" | "off" | "0" => Some(false),
        _ => None,
    }
}

/// One line's value against one Nix value.
fn same(unit: &str, nix: &Value) -> bool {
    match nix {
        Value::Bool(b) => systemd_bool(unit) == Some(*b),
        Value::String(s) => unit == s,
        Value::Number(n) => unit == n.to_string(),
        _ => false,
    }
}

/// Every difference between `unit`'s `[Service]` sandbox and `hardening`, one line each.
fn drift(hardening: &Map<String, Value>, unit: &str) -> Vec<String> {
    let service = service_section(unit);
    let mut problems = Vec::new();
    for (key, nix) in hardening {
        let lines: Vec<&str> = service
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect();
        let want: Vec<&Value> = match nix {
            Value::Array(items) => items.iter().collect(),
            Value::Object(_) | Value::Null => {
                problems.push(format!("{key}: {nix} has no plain unit form"));
                continue;
            }
            one => vec![one],
        };
        let equal = lines.len() == want.len() && lines.iter().zip(&want).all(|(u, n)| same(u, n));
        if !equal {
            problems.push(format!(
                "{key}: hardening.nix has {nix}, the unit {lines:?}"
            ));
        }
    }
    for (key, value) in &service {
        if !hardening.contains_key(key) && !SERVICE_KEYS.contains(&key.as_str()) {
            problems.push(format!(
                "{key}={value}: in the unit's [Service] but not in hardening.nix (add it there) \
                 nor a known service key"
            ));
        }
    }
    problems.dedup();
    problems
}

#[test]
fn packaged_unit_has_the_nixos_hardening() {
    let unit = std::fs::read_to_string(UNIT).expect("unit file");
    let problems = drift(&hardening(), &unit);
    assert!(
        problems.is_empty(),
        "{UNIT} differs from {HARDENING}:\n{}",
        problems.join("\n")
    );
}

#[test]
fn drift_is_found_in_either_file() {
    let hardening = hardening();
    let unit = std::fs::read_to_string(UNIT).expect("unit file");
    let changed = |from: &str, to: &str| {
        assert!(unit.contains(from), "{from} not in the unit");
        drift(&hardening, &unit.replacen(from, to, 1))
    };
    // A value, a list element, a list written on one line, a key gone, a key added.
    for (from, to, key) in [
        (
            "ProtectSystem=strict",
            "ProtectSystem=full",
            "ProtectSystem",
        ),
        ("PrivateTmp=yes", "PrivateTmp=no", "PrivateTmp"),
        (
            "SystemCallFilter=~@privileged\n",
            "SystemCallFilter=~@privileged @resources\n",
            "SystemCallFilter",
        ),
        (
            "SystemCallFilter=@system-service\nSystemCallFilter=~@privileged\n",
            "SystemCallFilter=@system-service ~@privileged\n",
            "SystemCallFilter",
        ),
        ("KeyringMode=private\n", "", "KeyringMode"),
        ("UMask=0077\n", "UMask=0077\nProcSubset=pid\n", "ProcSubset"),
    ] {
        let problems = changed(from, to);
        assert!(
            problems.iter().any(|p| p.starts_with(key)),
            "{from:?} -> {to:?}: {problems:?}"
        );
    }
    let mut more = hardening.clone();
    more.insert("ProtectHostname".into(), Value::Bool(false));
    assert!(
        drift(&more, &unit)
            .iter()
            .any(|p| p.starts_with("ProtectHostname"))
    );
}

/// Without `User=`, DynamicUser names the user after the template (`relay-connector`) and
/// every instance runs as the same UID, able to read the others' credentials.
#[test]
fn each_instance_runs_as_its_own_user() {
    let unit = std::fs::read_to_string(UNIT).expect("unit file");
    let users: Vec<String> = service_section(&unit)
        .into_iter()
        .filter(|(k, _)| k == "User")
        .map(|(_, v)| v)
        .collect();
    assert_eq!(users, ["relay-connector-%i"], "{UNIT}");
    // The longest instance name setup accepts still gives a user name systemd takes.
    let longest = "x".repeat(relay_connector::setup::MAX_INSTANCE_NAME);
    assert!(format!("relay-connector-{longest}").len() <= 31);
}
