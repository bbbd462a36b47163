//! A schema-driven fuzz run: walks every operation of the served OpenAPI document with
//! random path parameters, query values and JSON bodies (valid, wrong-typed, oversized,
//! unknown fields, malformed bytes) as an admin, a read-only and a tenant-scoped caller,
//! and asserts that no answer is a 5xx and every error answer is the JSON error shape.

use bytes::Bytes;
use hyper::{Method, StatusCode};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Map, Value, json};

use crate::harness::{Db, Stack};

const ROUNDS: usize = 25;

fn random_text(rng: &mut StdRng) -> String {
    const PIECES: &[&str] = &[
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        "acme",
        "Acme",
        "beta",
        "x",
        "-",
        "_",
        "%20",
        "%2F",
        "..",
        "ü",
        "😀",
        "'",
        "\"",
        "%00",
        "0",
        "-1",
        "null",
        "true",
        "9999999999999999999",
        "1s",
        "15s",
        "-5s",
        "connector-received",
        "succeeded",
        "2026-01-01T00:00:00Z",
    ];
    let n = rng.random_range(1..4);
    (0..n)
        .map(|_| PIECES[rng.random_range(0..PIECES.len())])
        .collect()
}

fn random_value(rng: &mut StdRng, schema: Option<&Value>) -> Value {
    let kind = schema.and_then(|s| s["type"].as_str()).unwrap_or("string");
    match rng.random_range(0..10) {
        0 => Value::Null,
        1 => json!(rng.random_range(-5i64..5)),
        2 => json!(random_text(rng)),
        3 => json!([1, "a"]),
        4 => json!({"nested": true}),
        5 => json!(i64::MAX),
        _ => match kind {
            "integer" => json!(rng.random_range(-10i64..100_000)),
            "boolean" => json!(rng.random_bool(0.5)),
            _ => {
                if let Some(options) = schema.and_then(|s| s["enum"].as_array()) {
                    options[rng.random_range(0..options.len())].clone()
                } else if let Some(example) = schema.and_then(|s| s["example"].as_str()) {
                    json!(example)
                } else {
                    json!(random_text(rng))
                }
            }
        },
    }
}

fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"]
        .as_str()
        .and_then(|r| r.strip_prefix("#/components/schemas/"))
    {
        Some(name) => &doc["components"]["schemas"][name],
        None => schema,
    }
}

fn random_body(rng: &mut StdRng, doc: &Value, op: &Value) -> Option<Bytes> {
    let schema = op["requestBody"]["content"]["application/json"]["schema"].as_object()?;
    let schema = resolve(doc, &Value::Object(schema.clone())).clone();
    match rng.random_range(0..12) {
        0 => return Some(Bytes::from_static(b"{not json")),
        1 => return Some(Bytes::from_static(b"[]")),
        2 => return Some(Bytes::new()),
        3 => return Some(Bytes::from(vec![b'{'; 70_000])),
        _ => {}
    }
    let mut object = Map::new();
    if let Some(props) = schema["properties"].as_object() {
        for (name, prop) in props {
            if rng.random_bool(0.6) {
                object.insert(name.clone(), random_value(rng, Some(prop)));
            }
        }
    }
    if rng.random_bool(0.15) {
        object.insert(random_text(rng), json!(1));
    }
    Some(Bytes::from(Value::Object(object).to_string()))
}

fn random_path(rng: &mut StdRng, template: &str) -> String {
    template
        .split('/')
        .map(|seg| {
            if seg.starts_with('{') {
                let text = random_text(rng);
                text.bytes()
                    .map(|b| {
                        if b.is_ascii_alphanumeric() || b"-_.%".contains(&b) {
                            (b as char).to_string()
                        } else {
                            format!("%{b:02X}")
                        }
                    })
                    .collect()
            } else {
                seg.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

fn random_query(rng: &mut StdRng, op: &Value) -> String {
    let mut pairs = Vec::new();
    for p in op["parameters"].as_array().into_iter().flatten() {
        if p["in"] == "query" && rng.random_bool(0.5) {
            let value = match random_value(rng, Some(&p["schema"])) {
                Value::String(s) => s,
                other => other.to_string(),
            };
            pairs.push((p["name"].as_str().unwrap_or_default().to_owned(), value));
        }
    }
    if rng.random_bool(0.1) {
        pairs.push(("unknown".into(), "1".into()));
    }
    if pairs.is_empty() {
        String::new()
    } else {
        format!("?{}", serde_urlencoded::to_string(pairs).unwrap())
    }
}

#[tokio::test]
async fn openapi_fuzz_finds_no_server_errors() {
    let s = Stack::start(Db::Sqlite).await.unwrap();
    let admin = s
        .token("ops", "management:read management:write", None)
        .await;
    for name in ["acme", "beta"] {
        let (status, _) = s
            .call(
                Method::POST,
                "/management/tenants",
                &admin,
                Some(json!({"name": name})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);
    }
    let reader = s.token("viewer", "management:read", None).await;
    let scoped = s
        .token("acme-ops", "management:read management:write", Some("acme"))
        .await;
    let (_, doc) = s
        .call_raw(Method::GET, "/management/openapi.json", None, None)
        .await;
    let seed: u64 = rand::rng().random();
    eprintln!("fuzz seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut calls = 0;
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            for round in 0..ROUNDS {
                let token = [&admin, &reader, &scoped][round % 3];
                let target = format!(
                    "{}{}",
                    random_path(&mut rng, path),
                    random_query(&mut rng, op)
                );
                let body = random_body(&mut rng, &doc, op);
                let m: Method = method.to_uppercase().parse().unwrap();
                let (status, answer) = s
                    .call_raw(
                        m.clone(),
                        &target,
                        Some(&format!("Bearer {token}")),
                        body.clone(),
                    )
                    .await;
                calls += 1;
                assert!(
                    !status.is_server_error(),
                    "seed {seed}: {m} {target} {body:?} -> {status} {answer}"
                );
                if status.is_client_error()
                    && status != StatusCode::METHOD_NOT_ALLOWED
                    && status != StatusCode::PAYLOAD_TOO_LARGE
                {
                    assert!(
                        answer["error"].is_string(),
                        "seed {seed}: {m} {target} -> {status} {answer}"
                    );
                }
            }
        }
    }
    eprintln!("{calls} fuzz calls, no 5xx");
}
