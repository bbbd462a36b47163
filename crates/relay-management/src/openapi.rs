//! The OpenAPI 3.0 document of the API (hand-written next to the routes; a test checks that
//! every route of the router appears in it) and a small browsable HTML page.

use axum::Json;
use axum::http::header;
use axum::response::IntoResponse;
use serde_json::{Value, json};

/// Every `(method, path)` the router serves under `/management`, in OpenAPI path syntax.
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/management/openapi.json"),
    ("get", "/management/tenants"),
    ("post", "/management/tenants"),
    ("get", "/management/tenants/{name}"),
    ("put", "/management/tenants/{name}"),
    ("delete", "/management/tenants/{name}"),
    ("get", "/management/tenants/{name}/config"),
    ("put", "/management/tenants/{name}/config"),
    ("get", "/management/tenants/{name}/secrets"),
    ("post", "/management/tenants/{name}/secrets"),
    ("delete", "/management/tenants/{name}/secrets/{id}"),
    ("get", "/management/connections"),
    ("delete", "/management/connections/{id}"),
    ("get", "/management/nodes"),
    ("get", "/management/requests"),
    ("get", "/management/apikeys"),
    ("post", "/management/apikeys"),
    ("delete", "/management/apikeys/{id}"),
];

fn param(name: &str, location: &str, schema: Value, description: &str) -> Value {
    json!({
        "name": name, "in": location, "required": location == "path",
        "schema": schema, "description": description,
    })
}

fn name_param() -> Value {
    param(
        "name",
        "path",
        json!({"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"}),
        "Tenant name (case-insensitive)",
    )
}

fn id_param(what: &str) -> Value {
    param("id", "path", json!({"type": "string"}), what)
}

fn paging() -> Vec<Value> {
    vec![
        param(
            "skip",
            "query",
            json!({"type": "integer", "minimum": 0, "default": 0}),
            "Entries to skip",
        ),
        param(
            "take",
            "query",
            json!({"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}),
            "Page size",
        ),
    ]
}

fn errors(codes: &[&str]) -> serde_json::Map<String, Value> {
    codes
        .iter()
        .map(|c| {
            (
                (*c).to_owned(),
                json!({"description": "Error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}),
            )
        })
        .collect()
}

fn op(
    summary: &str,
    params: Vec<Value>,
    body: Option<&str>,
    ok: (&str, Option<&str>),
    errs: &[&str],
) -> Value {
    let mut responses = errors(errs);
    let mut success = json!({"description": "Success"});
    if let Some(schema) = ok.1 {
        success["content"] = json!({"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}});
    }
    responses.insert(ok.0.to_owned(), success);
    let mut op = json!({"summary": summary, "parameters": params, "responses": responses});
    if let Some(schema) = body {
        op["requestBody"] = json!({"required": true, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}});
    }
    op
}

/// The OpenAPI document; `authority` names the token service (its token URL is in the
/// `oauth2` security scheme, which is how `relayctl` finds it).
pub fn document_value(authority: &str) -> Value {
    let token_url = format!("{}/connect/token", authority.trim_end_matches('/'));
    let read = &["400", "401", "403", "404", "422"];
    let write = &["400", "401", "403", "404", "409", "422"];
    let mut list_params = paging();
    list_params.push(param(
        "filter",
        "query",
        json!({"type": "string", "maxLength": 64}),
        "Only names containing this text (ignoring case)",
    ));
    let mut request_params = paging();
    request_params.extend([
        param("tenant", "query", json!({"type": "string"}), "Tenant name"),
        param(
            "from",
            "query",
            json!({"type": "string", "format": "date-time"}),
            "Started at or after (RFC 3339 or unix ms)",
        ),
        param(
            "to",
            "query",
            json!({"type": "string", "format": "date-time"}),
            "Started before (RFC 3339 or unix ms)",
        ),
        param(
            "outcome",
            "query",
            json!({"type": "string", "enum": crate::routes::OUTCOMES}),
            "Outcome",
        ),
    ]);
    let duration = json!({"type": "string", "nullable": true, "example": "15s", "description": "humantime duration; null = server default"});
    json!({
        "openapi": "3.0.3",
        "info": {"title": "Relay management API", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Tenants, configuration, secrets, connections, nodes and the request log. Authenticate with a bearer token (scopes management:read / management:write, audience relay-management) or an API key (`Authorization: ApiKey rk_…` or `X-Api-Key`)."},
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "oauth2": {"type": "oauth2", "flows": {"clientCredentials": {"tokenUrl": token_url, "scopes": {
                    "management:read": "Read everything", "management:write": "Change everything"}}}},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-Api-Key"}
            },
            "schemas": {
                "Error": {"type": "object", "required": ["error", "message"], "properties": {
                    "error": {"type": "string"}, "message": {"type": "string"}, "field": {"type": "string"}}},
                "Tenant": {"type": "object", "properties": {
                    "id": {"type": "string"}, "name": {"type": "string"},
                    "display_name": {"type": "string", "nullable": true}, "description": {"type": "string", "nullable": true},
                    "created_at": {"type": "string", "format": "date-time"}, "updated_at": {"type": "string", "format": "date-time"}}},
                "TenantPage": {"type": "object", "properties": {
                    "items": {"type": "array", "items": {"$ref": "#/components/schemas/Tenant"}},
                    "total": {"type": "integer"}, "skip": {"type": "integer"}, "take": {"type": "integer"}}},
                "NewTenant": {"type": "object", "required": ["name"], "additionalProperties": false, "properties": {
                    "name": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
                    "display_name": {"type": "string", "maxLength": 200}, "description": {"type": "string", "maxLength": 2000}}},
                "TenantUpdate": {"type": "object", "additionalProperties": false, "properties": {
                    "name": {"type": "string"}, "display_name": {"type": "string", "maxLength": 200}, "description": {"type": "string", "maxLength": 2000}}},
                "TenantConfig": {"type": "object", "additionalProperties": false, "properties": {
                    "keep_alive_interval": duration, "reconnect_min_delay": duration, "reconnect_max_delay": duration,
                    "request_expiry": duration,
                    "max_body_bytes": {"type": "integer", "minimum": 0, "nullable": true},
                    "concurrency_limit": {"type": "integer", "minimum": 1, "maximum": 65535, "nullable": true},
                    "max_tunnels": {"type": "integer", "minimum": 1, "maximum": 1024, "nullable": true, "description": "Tunnels the tenant may hold on one relay node; more get 429 tunnel-limit (server default 32)."},
                    "acknowledge_mode": {"type": "string", "nullable": true, "enum": ["disabled", "connector-received", "connector-finished", "manual", null]},
                    "tracing": {"type": "boolean", "nullable": true},
                    "require_client_token": {"type": "boolean", "nullable": true}}},
                "NewSecret": {"type": "object", "additionalProperties": false, "properties": {
                    "expires_in": {"type": "string", "example": "90d"},
                    "scope": {"type": "string", "enum": ["connector", "client"], "default": "connector",
                              "description": "connector: opens tunnels; client: calls tenants that require client tokens. One never implies the other."}}},
                "CreatedSecret": {"type": "object", "properties": {
                    "id": {"type": "string"}, "secret": {"type": "string", "description": "Shown once"},
                    "scope": {"type": "string", "enum": ["connector", "client"]},
                    "created_at": {"type": "string"}, "expires_at": {"type": "string", "nullable": true}}},
                "NewApiKey": {"type": "object", "required": ["name"], "additionalProperties": false, "properties": {
                    "name": {"type": "string", "minLength": 1, "maxLength": 100},
                    "scopes": {"type": "array", "items": {"type": "string", "enum": ["management:read", "management:write"]},
                               "description": "Default: the caller's scopes; never more than the caller has"},
                    "tenant": {"type": "string", "description": "Restrict the key to this tenant (forced for tenant-scoped callers)"},
                    "expires_in": {"type": "string", "example": "90d"}}},
                "CreatedApiKey": {"type": "object", "properties": {
                    "id": {"type": "string"}, "name": {"type": "string"}, "key": {"type": "string", "description": "Shown once"},
                    "scopes": {"type": "array", "items": {"type": "string"}}, "tenant": {"type": "string", "nullable": true},
                    "created_at": {"type": "string"}, "expires_at": {"type": "string", "nullable": true}}},
                "List": {"type": "object", "properties": {"items": {"type": "array", "items": {"type": "object"}}, "total": {"type": "integer"}}}
            }
        },
        "security": [{"bearer": []}, {"oauth2": []}, {"apiKey": []}],
        "paths": {
            "/management/openapi.json": {"get": {"summary": "This document", "security": [], "responses": {"200": {"description": "OpenAPI 3 document"}}}},
            "/management/tenants": {
                "get": op("List tenants", list_params, None, ("200", Some("TenantPage")), read),
                "post": op("Create a tenant", vec![], Some("NewTenant"), ("201", Some("Tenant")), write),
            },
            "/management/tenants/{name}": {
                "get": op("Show a tenant", vec![name_param()], None, ("200", Some("Tenant")), read),
                "put": op("Update display name and description", vec![name_param()], Some("TenantUpdate"), ("200", Some("Tenant")), write),
                "delete": op("Delete a tenant with its configuration and secrets", vec![name_param()], None, ("204", None), write),
            },
            "/management/tenants/{name}/config": {
                "get": op("Tenant configuration", vec![name_param()], None, ("200", Some("TenantConfig")), read),
                "put": op("Replace the tenant configuration (pushed to connected connectors)", vec![name_param()], Some("TenantConfig"), ("200", Some("TenantConfig")), write),
            },
            "/management/tenants/{name}/secrets": {
                "get": op("List client secrets (never their values)", vec![name_param()], None, ("200", Some("List")), read),
                "post": op("Create a client secret (plaintext in this answer only)", vec![name_param()], Some("NewSecret"), ("201", Some("CreatedSecret")), write),
            },
            "/management/tenants/{name}/secrets/{id}": {
                "delete": op("Revoke a client secret", vec![name_param(), id_param("Secret id")], None, ("204", None), write),
            },
            "/management/connections": {
                "get": op("Live connector tunnels on all nodes", vec![param("tenant", "query", json!({"type": "string"}), "Tenant name")], None, ("200", Some("List")), read),
            },
            "/management/connections/{id}": {
                "delete": op("Ask the node holding the tunnel to close it", vec![id_param("Connection id")], None, ("202", None), write),
            },
            "/management/nodes": {
                "get": op("Relay nodes (origins)", vec![], None, ("200", Some("List")), read),
            },
            "/management/requests": {
                "get": op("Request log", request_params, None, ("200", Some("List")), read),
            },
            "/management/apikeys": {
                "get": op("List API keys (never their values)", vec![], None, ("200", Some("List")), read),
                "post": op("Create an API key (plaintext `key` in this answer only; it works only while the calling credential does)", vec![], Some("NewApiKey"), ("201", Some("CreatedApiKey")), write),
            },
            "/management/apikeys/{id}": {
                "delete": op("Revoke an API key", vec![id_param("API key id")], None, ("204", None), write),
            },
        }
    })
}

pub(crate) async fn document(
    axum::extract::State(state): axum::extract::State<crate::AppState>,
) -> Json<Value> {
    Json(document_value(&state.authority))
}

const PAGE: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Relay management API</title>
<style>body{font:15px system-ui,sans-serif;margin:2rem auto;max-width:60rem;padding:0 1rem}
code{background:#f3f3f3;padding:0 .2em}.m{display:inline-block;width:4.5em;font-weight:bold;text-transform:uppercase}
li{margin:.3em 0}small{color:#666}</style></head>
<body><h1>Relay management API</h1>
<p>Machine-readable: <a href="/management/openapi.json"><code>/management/openapi.json</code></a>.
Every call needs <code>Authorization: Bearer &lt;token&gt;</code> (from <code>POST /connect/token</code>
with <code>scope=management:read management:write</code>) or <code>X-Api-Key: rk_…</code>.</p>
<ul id="paths"><li>Loading…</li></ul>
<script>
fetch('/management/openapi.json').then(r => r.json()).then(doc => {
  const ul = document.getElementById('paths'); ul.innerHTML = '';
  for (const [path, ops] of Object.entries(doc.paths)) for (const [m, op] of Object.entries(ops)) {
    const li = document.createElement('li');
    const codes = Object.keys(op.responses || {}).join(' ');
    li.innerHTML = '<span class="m"></span><code></code> — <span></span> <small></small>';
    li.children[0].textContent = m; li.children[1].textContent = path;
    li.children[2].textContent = op.summary || ''; li.children[3].textContent = codes;
    ul.appendChild(li);
  }
});
</script></body></html>
"#;

pub(crate) async fn page() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], PAGE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_documented_and_nothing_else() {
        let doc = document_value("http://id");
        let paths = doc["paths"].as_object().expect("paths");
        for (method, path) in ROUTES {
            assert!(
                paths.get(*path).and_then(|p| p.get(*method)).is_some(),
                "{method} {path} undocumented"
            );
        }
        let documented: usize = paths
            .values()
            .map(|p| p.as_object().map_or(0, |o| o.len()))
            .sum();
        assert_eq!(
            documented,
            ROUTES.len(),
            "document has operations the router lacks"
        );
    }
}
