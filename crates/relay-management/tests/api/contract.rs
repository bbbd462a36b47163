//! Every endpoint: success and its 400/401/403/404/409/422 answers.

use bytes::Bytes;
use hyper::{Method, StatusCode};
use relay_store::{NewConnection, RequestLogEntry, now_ms};
use serde_json::{Value, json};

use crate::harness::{Db, Stack};

const RW: &str = "management:read management:write";
const RO: &str = "management:read";

#[tokio::test]
async fn contract_sqlite() {
    let stack = Stack::start(Db::Sqlite).await.unwrap();
    contract(&stack).await;
}

#[tokio::test]
async fn contract_postgres() {
    if let Some(stack) = Stack::start(Db::Postgres).await {
        contract(&stack).await;
    }
}

fn field(body: &Value) -> &str {
    body["field"].as_str().unwrap_or_default()
}

async fn contract(s: &Stack) {
    let admin = s.token("ops", RW, None).await;
    let reader = s.token("viewer", RO, None).await;
    unauthenticated(s).await;
    tenants(s, &admin, &reader).await;
    // Tenant-scoped credentials exist once their tenant does.
    let scoped = s.token("acme-ops", RW, Some("Acme")).await;
    scoping(s, &admin, &scoped).await;
    config(s, &admin, &reader).await;
    secrets(s, &admin, &reader, &scoped).await;
    connections_and_nodes(s, &admin, &reader, &scoped).await;
    requests(s, &admin, &scoped).await;
    api_keys(s).await;
    api_key_endpoints(s, &admin, &reader, &scoped).await;
    token_endpoint(s).await;
    deletion(s, &admin, &reader, &scoped).await;
}

async fn unauthenticated(s: &Stack) {
    for (method, path) in [
        (Method::GET, "/management/tenants"),
        (Method::POST, "/management/tenants"),
        (Method::GET, "/management/tenants/x/config"),
        (Method::GET, "/management/connections"),
        (Method::GET, "/management/nodes"),
        (Method::GET, "/management/requests"),
    ] {
        let (status, body) = s.call_raw(method.clone(), path, None, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}");
        assert_eq!(body["error"], "unauthorized");
        for auth in ["Bearer not.a.token", "Basic b3BzOng=", "ApiKey rk_nope"] {
            let (status, _) = s.call_raw(method.clone(), path, Some(auth), None).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path} {auth}");
        }
    }
    let (status, doc) = s
        .call_raw(Method::GET, "/management/openapi.json", None, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc["openapi"], "3.0.3");
    for (method, path) in relay_management::openapi::ROUTES {
        assert!(doc["paths"][path][method].is_object(), "{method} {path}");
    }
    let token_url = format!("http://{}/connect/token", s.identity);
    assert_eq!(
        doc["components"]["securitySchemes"]["oauth2"]["flows"]["clientCredentials"]["tokenUrl"],
        token_url.as_str()
    );
    let (status, _) = s.call_raw(Method::GET, "/management/", None, None).await;
    assert_eq!(status, StatusCode::OK, "browsable page");
    let (status, body) = s
        .call_raw(Method::GET, "/management/nope", None, None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"], "not_found");
}

async fn tenants(s: &Stack, admin: &str, reader: &str) {
    let (status, body) = s
        .call(
            Method::POST,
            "/management/tenants",
            admin,
            Some(json!({"name": "Acme", "display_name": "Acme Corp"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["name"], "Acme");
    assert_eq!(body["display_name"], "Acme Corp");
    for name in ["beta", "gamma_1", "Delta-x"] {
        let (status, _) = s
            .call(
                Method::POST,
                "/management/tenants",
                admin,
                Some(json!({"name": name})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);
    }
    let (status, body) = s
        .call(
            Method::POST,
            "/management/tenants",
            admin,
            Some(json!({"name": "ACME"})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"], "conflict");
    for (input, want_field) in [
        (json!({"name": "has space"}), "name"),
        (json!({"name": ""}), "name"),
        (json!({"name": "x".repeat(65)}), "name"),
        (json!({"name": 5}), "name"),
        (json!({"name": "ok", "colour": "red"}), "colour"),
        (json!({"display_name": "no name"}), "name"),
        (
            json!({"name": "ok2", "display_name": "d".repeat(201)}),
            "display_name",
        ),
    ] {
        let (status, body) = s
            .call(
                Method::POST,
                "/management/tenants",
                admin,
                Some(input.clone()),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{input}: {body}");
        assert_eq!(field(&body), want_field, "{input}: {body}");
    }
    let (status, body) = s
        .call_raw(
            Method::POST,
            "/management/tenants",
            Some(&format!("Bearer {admin}")),
            Some(Bytes::from_static(b"{nope")),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = s
        .call(
            Method::POST,
            "/management/tenants",
            reader,
            Some(json!({"name": "ro"})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");

    let (status, body) = s
        .call(Method::GET, "/management/tenants?take=2", reader, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["total"], 4);
    let names: Vec<&str> = body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Acme", "beta"]);
    let (_, body) = s
        .call(
            Method::GET,
            "/management/tenants?skip=2&take=2",
            reader,
            None,
        )
        .await;
    let names: Vec<&str> = body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Delta-x", "gamma_1"]);
    let (_, body) = s
        .call(Method::GET, "/management/tenants?filter=MA_", reader, None)
        .await;
    assert_eq!(body["total"], 1, "{body}");
    assert_eq!(body["items"][0]["name"], "gamma_1");
    for (query, want) in [
        ("take=0", "take"),
        ("take=abc", "take"),
        ("skip=-1", "skip"),
    ] {
        let (status, body) = s
            .call(
                Method::GET,
                &format!("/management/tenants?{query}"),
                reader,
                None,
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{query}");
        assert_eq!(field(&body), want);
    }
    let (status, body) = s
        .call(Method::GET, "/management/tenants?colour=red", reader, None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(field(&body), "colour");

    let (status, body) = s
        .call(Method::GET, "/management/tenants/acme", reader, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["name"], "Acme");
    let (status, _) = s
        .call(Method::GET, "/management/tenants/nobody", reader, None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = s
        .call(Method::GET, "/management/tenants/bad%20name", reader, None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, body) = s
        .call(
            Method::PUT,
            "/management/tenants/beta",
            admin,
            Some(json!({"display_name": "Beta", "description": "second"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["description"], "second");
    let (status, body) = s
        .call(
            Method::PUT,
            "/management/tenants/beta",
            admin,
            Some(json!({"name": "other"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(field(&body), "name");
    let (status, _) = s
        .call(
            Method::PUT,
            "/management/tenants/beta",
            reader,
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = s
        .call(
            Method::PUT,
            "/management/tenants/nobody",
            admin,
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

async fn scoping(s: &Stack, admin: &str, scoped: &str) {
    let (status, body) = s
        .call(Method::GET, "/management/tenants", scoped, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["total"], 1, "{body}");
    assert_eq!(body["items"][0]["name"], "Acme");
    let (status, _) = s
        .call(Method::GET, "/management/tenants/beta", scoped, None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "other tenant looks missing");
    let (status, _) = s
        .call(Method::GET, "/management/tenants/beta/config", scoped, None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = s
        .call(
            Method::PUT,
            "/management/tenants/beta",
            scoped,
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = s
        .call(
            Method::POST,
            "/management/tenants",
            scoped,
            Some(json!({"name": "mine"})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = s
        .call(Method::GET, "/management/tenants/ACME", scoped, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let _ = admin;
}

async fn config(s: &Stack, admin: &str, reader: &str) {
    let (status, body) = s
        .call(Method::GET, "/management/tenants/acme/config", reader, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["keep_alive_interval"], Value::Null);
    let wanted = json!({
        "keep_alive_interval": "5s", "reconnect_min_delay": "1s", "reconnect_max_delay": "1m",
        "request_expiry": "30s", "max_body_bytes": 1048576, "concurrency_limit": 8,
        "acknowledge_mode": "connector-received", "tracing": true, "require_client_token": false,
        "max_tunnels": 4,
    });
    let (status, body) = s
        .call(
            Method::PUT,
            "/management/tenants/acme/config",
            admin,
            Some(wanted.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, wanted);
    let (_, body) = s
        .call(Method::GET, "/management/tenants/Acme/config", reader, None)
        .await;
    assert_eq!(body, wanted);
    for (input, want) in [
        (
            json!({"keep_alive_interval": "soon"}),
            "keep_alive_interval",
        ),
        (
            json!({"keep_alive_interval": "10ms"}),
            "keep_alive_interval",
        ),
        (json!({"keep_alive_interval": 15}), "keep_alive_interval"),
        (
            json!({"reconnect_min_delay": "10s", "reconnect_max_delay": "1s"}),
            "reconnect_max_delay",
        ),
        (json!({"concurrency_limit": 0}), "concurrency_limit"),
        (json!({"concurrency_limit": 70000}), "concurrency_limit"),
        (json!({"max_tunnels": 0}), "max_tunnels"),
        (json!({"max_tunnels": 5000}), "max_tunnels"),
        (json!({"max_body_bytes": -1}), "max_body_bytes"),
        (json!({"acknowledge_mode": "sometimes"}), "acknowledge_mode"),
        (json!({"request_expiry": "0s"}), "request_expiry"),
        (json!({"tracing": "yes"}), "tracing"),
        (json!({"keepalive": "5s"}), "keepalive"),
    ] {
        let (status, body) = s
            .call(
                Method::PUT,
                "/management/tenants/acme/config",
                admin,
                Some(input.clone()),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{input}: {body}");
        assert_eq!(field(&body), want, "{input}: {body}");
    }
    let (status, _) = s
        .call(
            Method::PUT,
            "/management/tenants/acme/config",
            reader,
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = s
        .call(
            Method::PUT,
            "/management/tenants/nobody/config",
            admin,
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

async fn secrets(s: &Stack, admin: &str, reader: &str, scoped: &str) {
    let (status, created) = s
        .call(
            Method::POST,
            "/management/tenants/acme/secrets",
            admin,
            Some(json!({"expires_in": "30d"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let secret = created["secret"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(created["expires_at"].is_string());
    let (status, token) = s.token_request("Acme", &secret, "connector").await;
    assert_eq!(status, StatusCode::OK, "the new secret works: {token}");
    let (status, _) = s
        .call_raw(
            Method::POST,
            "/management/tenants/acme/secrets",
            Some(&format!("Bearer {scoped}")),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "no body: no expiry");

    let (status, list) = s
        .call(
            Method::GET,
            "/management/tenants/acme/secrets",
            reader,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["total"], 2);
    assert!(
        !list.to_string().contains(&secret),
        "secrets are never listed"
    );
    assert!(list["items"][0]["last_used_at"].is_string(), "{list}");
    assert_eq!(list["items"][0]["active"], true);

    let (status, body) = s
        .call(
            Method::POST,
            "/management/tenants/acme/secrets",
            admin,
            Some(json!({"expires_in": "never"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(field(&body), "expires_in");
    let (status, _) = s
        .call(
            Method::POST,
            "/management/tenants/acme/secrets",
            reader,
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = s
        .call(
            Method::POST,
            "/management/tenants/beta/secrets",
            scoped,
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = s
        .call(
            Method::GET,
            "/management/tenants/beta/secrets",
            scoped,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let path = format!("/management/tenants/acme/secrets/{id}");
    let (status, _) = s.call(Method::DELETE, &path, reader, None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = s
        .call(
            Method::DELETE,
            &format!("/management/tenants/beta/secrets/{id}"),
            admin,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "secret of another tenant");
    let (status, _) = s.call(Method::DELETE, &path, admin, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = s.token_request("Acme", &secret, "connector").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "revoked");
    let (status, _) = s
        .call(
            Method::DELETE,
            "/management/tenants/acme/secrets/nope",
            admin,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

async fn connections_and_nodes(s: &Stack, admin: &str, reader: &str, scoped: &str) {
    let now = now_ms();
    s.store.register_origin("node-1", now).await.unwrap();
    for (id, tenant) in [("c-acme", "Acme"), ("c-beta", "beta")] {
        let tenant = s.store.tenant_by_name(tenant).await.unwrap().unwrap();
        s.store
            .record_connection_opened(&NewConnection {
                id: id.into(),
                tenant_id: tenant.id,
                origin_id: Some("node-1".into()),
                remote_addr: "10.0.0.1:4000".into(),
                connector_version: Some("0.1.0".into()),
                machine_name: Some("m1".into()),
                connected_at: now,
                tenant_name: "acme".into(),
                secret_id: None,
                expires_at: None,
            })
            .await
            .unwrap();
    }
    let (status, body) = s
        .call(Method::GET, "/management/connections", reader, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["total"], 2, "{body}");
    assert_eq!(body["items"][0]["node"], "node-1");
    assert_eq!(body["items"][0]["remote_address"], "10.0.0.1:4000");
    let (_, body) = s
        .call(
            Method::GET,
            "/management/connections?tenant=BETA",
            reader,
            None,
        )
        .await;
    assert_eq!(body["total"], 1);
    let (_, body) = s
        .call(Method::GET, "/management/connections", scoped, None)
        .await;
    assert_eq!(body["total"], 1, "{body}");
    assert_eq!(body["items"][0]["tenant"], "Acme");

    let (status, _) = s
        .call(
            Method::DELETE,
            "/management/connections/c-beta",
            scoped,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "not yours");
    let (status, _) = s
        .call(
            Method::DELETE,
            "/management/connections/c-beta",
            reader,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = s
        .call(
            Method::DELETE,
            "/management/connections/c-beta",
            admin,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(
        s.store.disconnect_requests("node-1").await.unwrap(),
        ["c-beta"]
    );
    let (status, _) = s
        .call(Method::DELETE, "/management/connections/nope", admin, None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, body) = s.call(Method::GET, "/management/nodes", reader, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["items"][0]["id"], "node-1");
    assert_eq!(body["items"][0]["state"], "running");
}

async fn requests(s: &Stack, admin: &str, scoped: &str) {
    let base = now_ms() - 10_000;
    let mut ids = Vec::new();
    for name in ["acme", "beta"] {
        ids.push(s.store.tenant_by_name(name).await.unwrap().unwrap().id);
    }
    let entries: Vec<RequestLogEntry> = (0..6)
        .map(|i| RequestLogEntry {
            id: uuid::Uuid::now_v7().to_string(),
            tenant: if i % 2 == 0 {
                "acme".into()
            } else {
                "beta".into()
            },
            tenant_id: Some(ids[usize::from(i % 2 != 0)].clone()),
            target: "web".into(),
            method: "GET".into(),
            path: format!("/p{i}"),
            status: if i == 5 { 504 } else { 200 },
            request_bytes: Some(0),
            response_bytes: Some(10),
            duration_ms: 3,
            outcome: if i == 5 {
                "expired".into()
            } else {
                "succeeded".into()
            },
            node: "node-1".into(),
            started_at: base + i * 1000,
        })
        .collect();
    s.store.insert_request_log(entries).await.unwrap();
    let (status, body) = s
        .call(Method::GET, "/management/requests", admin, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["total"], 6);
    assert_eq!(body["items"][0]["path"], "/p5", "newest first");
    let (_, body) = s
        .call(
            Method::GET,
            "/management/requests?tenant=Beta&outcome=expired",
            admin,
            None,
        )
        .await;
    assert_eq!(body["total"], 1, "{body}");
    assert_eq!(body["items"][0]["status"], 504);
    let (_, body) = s
        .call(
            Method::GET,
            &format!(
                "/management/requests?from={}&to={}&take=1",
                base + 1000,
                base + 3000
            ),
            admin,
            None,
        )
        .await;
    assert_eq!(body["total"], 2);
    assert_eq!(body["items"].as_array().unwrap().len(), 1);
    let (_, body) = s
        .call(
            Method::GET,
            "/management/requests?from=2000-01-01T00:00:00Z",
            admin,
            None,
        )
        .await;
    assert_eq!(body["total"], 6);
    for (query, want) in [
        ("outcome=odd", "outcome"),
        ("from=yesterday", "from"),
        ("take=5000", "take"),
        ("tenant=a%20b", "tenant"),
    ] {
        let (status, body) = s
            .call(
                Method::GET,
                &format!("/management/requests?{query}"),
                admin,
                None,
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{query}: {body}");
        assert_eq!(field(&body), want);
    }
    let (_, body) = s
        .call(Method::GET, "/management/requests", scoped, None)
        .await;
    assert_eq!(body["total"], 3, "tenant-scoped: own tenant only");
    let (status, _) = s
        .call(
            Method::GET,
            "/management/requests?tenant=beta",
            scoped,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

async fn api_keys(s: &Stack) {
    let (info, key) = s.store.create_api_key("ci", RO, None, None).await.unwrap();
    assert!(key.starts_with("rk_"));
    let (status, body) = s
        .call_raw(
            Method::GET,
            "/management/tenants",
            Some(&format!("ApiKey {key}")),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = s
        .call_raw(
            Method::POST,
            "/management/tenants",
            Some(&format!("ApiKey {key}")),
            Some(Bytes::from_static(b"{\"name\":\"k\"}")),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "read-only key");
    let req = hyper::Request::get(format!("http://{}/management/nodes", s.api))
        .header("x-api-key", &key)
        .body(http_body_util::Full::new(Bytes::new()))
        .unwrap();
    let (status, _, _) = s.send(req).await;
    assert_eq!(status, StatusCode::OK);
    assert!(s.store.revoke_api_key(&info.id).await.unwrap());
    let (status, _) = s
        .call_raw(
            Method::GET,
            "/management/tenants",
            Some(&format!("ApiKey {key}")),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "revoked key");
}

async fn api_key_endpoints(s: &Stack, admin: &str, reader: &str, scoped: &str) {
    let path = "/management/apikeys";
    // Create: the plaintext once, never cached; it works as a credential right away.
    let (status, created) = s
        .call(
            Method::POST,
            path,
            admin,
            Some(json!({"name": "deploy bot", "scopes": ["management:read"], "expires_in": "30d"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let key = created["key"].as_str().unwrap().to_owned();
    assert!(key.starts_with("rk_"), "{created}");
    assert_eq!(created["scopes"], json!(["management:read"]));
    assert!(created["expires_at"].is_string(), "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let (status, _) = s
        .call_raw(
            Method::GET,
            "/management/nodes",
            Some(&format!("ApiKey {key}")),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "new key authenticates");
    // Listed without its value.
    let (status, list) = s.call(Method::GET, path, reader, None).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let listed = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id.as_str())
        .unwrap();
    assert_eq!(listed["name"], "deploy bot");
    assert_eq!(listed["active"], true);
    assert!(!list.to_string().contains(&key), "plaintext never listed");
    // Validation and authorization.
    for (body, field_name) in [
        (json!({"name": ""}), "name"),
        (json!({"name": "x", "scopes": ["root"]}), "scopes"),
        (json!({"name": "x", "scopes": []}), "scopes"),
        (json!({"name": "x", "expires_in": "soon"}), "expires_in"),
        (json!({"name": "x", "tenant": "nope"}), "tenant"),
    ] {
        let (status, answer) = s.call(Method::POST, path, admin, Some(body.clone())).await;
        assert!(
            status == StatusCode::BAD_REQUEST || status == StatusCode::UNPROCESSABLE_ENTITY,
            "{body}: {status} {answer}"
        );
        assert_eq!(field(&answer), field_name, "{body}: {answer}");
    }
    let (status, _) = s
        .call(
            Method::POST,
            path,
            admin,
            Some(json!({"name": "x", "colour": "red"})),
        )
        .await;
    assert!(status.is_client_error(), "unknown field rejected");
    let (status, _) = s
        .call(Method::POST, path, reader, Some(json!({"name": "x"})))
        .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "read scope cannot create keys"
    );
    let (status, _) = s.call_raw(Method::GET, path, None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // A tenant-scoped caller: its keys are bound to its tenant, others are invisible.
    let (status, answer) = s
        .call(
            Method::POST,
            path,
            scoped,
            Some(json!({"name": "acme bot", "tenant": "someone-else"})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{answer}");
    let (status, own) = s
        .call(
            Method::POST,
            path,
            scoped,
            Some(json!({"name": "acme bot"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{own}");
    assert_eq!(
        own["tenant"]
            .as_str()
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("acme")
    );
    let (_, scoped_list) = s.call(Method::GET, path, scoped, None).await;
    let ids: Vec<&str> = scoped_list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|k| k["id"].as_str())
        .collect();
    assert_eq!(ids, [own["id"].as_str().unwrap()], "{scoped_list}");
    let (status, _) = s
        .call(Method::DELETE, &format!("{path}/{id}"), scoped, None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "another tenant's key");
    // Revoke.
    let (status, _) = s
        .call(Method::DELETE, &format!("{path}/{id}"), reader, None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = s
        .call(Method::DELETE, &format!("{path}/{id}"), admin, None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = s
        .call(
            Method::DELETE,
            &format!("{path}/does-not-exist"),
            admin,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = s
        .call_raw(
            Method::GET,
            "/management/nodes",
            Some(&format!("ApiKey {key}")),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "revoked through the API");
}

async fn token_endpoint(s: &Stack) {
    let (_, secret) = s
        .store
        .create_management_client("readonly", RO, None)
        .await
        .unwrap();
    let (status, body) = s.token_request("readonly", &secret, RW).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"], "invalid_scope");
    let (status, body) = s
        .token_request("readonly", &secret, "management:read connector")
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = s.token_request("readonly", "wrong", RO).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(!body.to_string().contains(&secret));
    // A tenant secret is no management credential.
    let tenant = s.store.tenant_by_name("beta").await.unwrap().unwrap();
    let (_, tenant_secret) = s
        .store
        .create_secret(&tenant.id, None, relay_store::CredentialScope::Connector)
        .await
        .unwrap();
    let (status, body) = s.token_request("beta", &tenant_secret, RO).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"], "invalid_scope");
    // Guessing is rate limited per client id.
    let mut limited = None;
    for _ in 0..40 {
        let form = serde_urlencoded::to_string([
            ("grant_type", "client_credentials"),
            ("client_id", "guessme"),
            ("client_secret", "guess"),
            ("scope", RO),
        ])
        .unwrap();
        let req = hyper::Request::post(format!("http://{}/connect/token", s.identity))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(http_body_util::Full::new(Bytes::from(form)))
            .unwrap();
        let (status, headers, _) = s.send(req).await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            limited = headers
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            break;
        }
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let retry: u64 = limited.expect("rate limited").parse().unwrap();
    assert!(retry >= 1);
    let (status, _) = s.token_request("readonly", &secret, RO).await;
    assert_eq!(status, StatusCode::OK, "other clients are not limited");
}

async fn deletion(s: &Stack, admin: &str, reader: &str, scoped: &str) {
    let (status, _) = s
        .call(Method::DELETE, "/management/tenants/gamma_1", reader, None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = s
        .call(Method::DELETE, "/management/tenants/acme", scoped, None)
        .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "scoped credentials cannot delete their tenant"
    );
    let (status, _) = s
        .call(Method::DELETE, "/management/tenants/gamma_1", scoped, None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = s
        .call(Method::DELETE, "/management/tenants/gamma_1", admin, None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = s
        .call(Method::GET, "/management/tenants/gamma_1", admin, None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = s
        .call(Method::DELETE, "/management/tenants/gamma_1", admin, None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
