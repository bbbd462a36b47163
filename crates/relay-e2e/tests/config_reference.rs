//! `docs/configuration.md` cannot drift from the code: every key each service's
//! configuration accepts must appear in its table, and every key a table names must be
//! accepted.
//!
//! The keys come from the configuration types themselves: a probe document with an unknown
//! key `zzz_probe` in a table makes `deny_unknown_fields` list the table's fields, and the
//! walk recurses into every field that is itself a table (maps such as `targets` are probed
//! with a placeholder entry `NAME`).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;

use relay_core::config::{ConfigError, load_from};
use serde::de::DeserializeOwned;

const PROBE: &str = "zzz_probe";

enum Shape {
    Table(Vec<String>),
    Map,
    Leaf,
}

fn probe<T: DeserializeOwned>(path: &[String]) -> Shape {
    let text = if path.is_empty() {
        format!("{PROBE} = 1\n")
    } else {
        let header: Vec<String> = path.iter().map(|s| format!("\"{s}\"")).collect();
        format!("[{}]\n{PROBE} = 1\n", header.join("."))
    };
    let err = match load_from::<T>(&text, "probe.toml", "RELAY_PROBE_NONE", Vec::new()) {
        Ok(_) => return Shape::Leaf,
        Err(e) => e,
    };
    let ConfigError::Key { key, message } = err else {
        return Shape::Leaf;
    };
    let mut probe_key = path.to_vec();
    probe_key.push(PROBE.to_owned());
    if message.contains(&format!("unknown field `{PROBE}`")) {
        // "unknown field `zzz_probe`, expected one of `a`, `b`\nin `table`": the first line.
        let first_line = message.lines().next().unwrap_or_default();
        let expected = first_line
            .split_once("expected")
            .map_or("", |(_, rest)| rest);
        let fields = expected
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect();
        return Shape::Table(fields);
    }
    if key == probe_key.join(".") {
        return Shape::Map;
    }
    Shape::Leaf
}

/// Every leaf key `T` accepts, dotted, with `NAME` standing for map entries.
fn keys<T: DeserializeOwned>() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    walk::<T>(&[], &mut out);
    out
}

fn walk<T: DeserializeOwned>(path: &[String], out: &mut BTreeSet<String>) {
    match probe::<T>(path) {
        Shape::Table(fields) => {
            for field in fields {
                let mut child = path.to_vec();
                child.push(field);
                walk::<T>(&child, out);
            }
        }
        Shape::Map => {
            let mut child = path.to_vec();
            child.push("NAME".to_owned());
            walk::<T>(&child, out);
        }
        Shape::Leaf => {
            out.insert(path.join("."));
        }
    }
}

/// Keys named in the first cell of the tables under `## {heading}` (up to the next `## `).
fn documented(doc: &str, heading: &str) -> BTreeSet<String> {
    let start = doc
        .find(&format!("\n## {heading}\n"))
        .unwrap_or_else(|| panic!("docs/configuration.md has no section `## {heading}`"));
    let section = &doc[start + 1..];
    let end = section[3..].find("\n## ").map_or(section.len(), |i| i + 3);
    let mut out = BTreeSet::new();
    for line in section[..end].lines() {
        let line = line.trim_start();
        if !line.starts_with("| `") {
            continue;
        }
        let cell = line.split('|').nth(1).unwrap_or_default();
        let ticks: Vec<&str> = cell.split('`').skip(1).step_by(2).collect();
        // "`[table]` `a`, `b`" names table.a and table.b; "`[table]`" the table itself.
        let keys: Vec<String> = match ticks.as_slice() {
            [table, keys @ ..] if table.starts_with('[') => {
                let table = table.trim_matches(|c| c == '[' || c == ']');
                if keys.is_empty() {
                    vec![table.to_owned()]
                } else {
                    keys.iter().map(|k| format!("{table}.{k}")).collect()
                }
            }
            [key, ..] => vec![(*key).to_owned()],
            [] => continue,
        };
        // Flags and commands live in tables of their own.
        for key in keys {
            if !key.starts_with('-') && !key.contains(' ') {
                out.insert(key);
            }
        }
    }
    out
}

fn check(service: &str, code: &BTreeSet<String>, doc: &str, common: &BTreeSet<String>) {
    let own = documented(doc, service);
    let missing: Vec<&String> = code
        .iter()
        .filter(|k| !own.contains(*k) && !common.contains(*k))
        .collect();
    assert!(
        missing.is_empty(),
        "{service}: keys accepted by the code but missing from docs/configuration.md: {missing:?}"
    );
    let unknown: Vec<&String> = own
        .iter()
        .filter(|k| !code.contains(*k) && !code.iter().any(|c| c.starts_with(&format!("{k}."))))
        .collect();
    assert!(
        unknown.is_empty(),
        "{service}: keys in docs/configuration.md the code does not accept: {unknown:?}"
    );
}

#[test]
fn configuration_reference_matches_the_code() {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/configuration.md"
    ))
    .unwrap();
    let common = documented(&doc, "Rules common to all services");
    let server = keys::<relay_server::Config>();
    let connector = keys::<relay_connector::Config>();
    let identity = keys::<relay_identity::Config>();
    // The walk itself works: known keys of each kind are found.
    for key in [
        "listen.public",
        "bus.url",
        "tls.cert_file",
        "metrics.listen",
        "log.level",
    ] {
        assert!(server.contains(key), "server keys lack {key}: {server:?}");
    }
    for key in ["relay_url", "targets.NAME.url", "proxy", "ca_file"] {
        assert!(
            connector.contains(key),
            "connector keys lack {key}: {connector:?}"
        );
    }
    assert!(identity.contains("keys.rotation_interval"), "{identity:?}");

    check("relay-server", &server, &doc, &common);
    check("relay-connector", &connector, &doc, &common);
    check("relay-identity", &identity, &doc, &common);
    let all: BTreeSet<&String> = server.iter().chain(&connector).chain(&identity).collect();
    for key in &common {
        assert!(
            all.contains(key),
            "common key `{key}` is accepted by no service"
        );
    }
}

#[test]
fn unknown_and_malformed_keys_are_named() {
    let cases: [(&str, &str, &str); 5] = [
        (
            "[database]\nurl = \"sqlite::memory:\"\n[relay]\nconector_wait = \"1s\"\n",
            "relay.conector_wait",
            "unknown field",
        ),
        (
            "[database]\nurl = \"sqlite::memory:\"\n[relay]\nconnector_wait = 5\n",
            "relay.connector_wait",
            "invalid type",
        ),
        (
            "[database]\nurl = \"sqlite::memory:\"\n[metrics]\nlisten = \"nowhere\"\n",
            "metrics.listen",
            "invalid socket address",
        ),
        (
            "[database]\nurl = \"sqlite::memory:\"\n[tls]\ncert_file = \"/c.pem\"\n",
            "tls.key_file",
            "required",
        ),
        (
            "[database]\nurl = \"sqlite::memory:\"\n[tls]\ncert = \"/c.pem\"\n",
            "tls.cert",
            "unknown field",
        ),
    ];
    for (text, key, message) in cases {
        let result =
            load_from::<relay_server::Config>(text, "server.toml", "RELAY_NONE", Vec::new())
                .and_then(|c| c.validate().map(|()| c));
        let err = result.expect_err(text).to_string();
        assert!(err.contains(&format!("`{key}`")), "{err}");
        assert!(err.contains(message), "{err}");
    }
    let connector = "relay_url = \"http://r\"\ntenant = \"acme\"\nsecret = \"s\"\n";
    for (extra, key, message) in [
        ("proxy = \"https://p:1\"\n", "proxy", "only http://"),
        ("cafile = \"/x\"\n", "cafile", "unknown field"),
        (
            "[metrics]\nlisten = 9100\n",
            "metrics.listen",
            "invalid type",
        ),
    ] {
        let text = format!("{connector}{extra}");
        let result =
            load_from::<relay_connector::Config>(&text, "c.toml", "RELAY_NONE", Vec::new())
                .and_then(|c| c.validate().map(|()| c));
        let err = result.expect_err(&text).to_string();
        assert!(err.contains(&format!("`{key}`")), "{err}");
        assert!(err.contains(message), "{err}");
    }
}
