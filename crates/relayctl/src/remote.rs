//! Commands through the management API: tables for people, `--json` for scripts.

use hyper::Method;
use serde_json::{Map, Value, json};

use crate::api::Api;
use crate::cli::{
    ApiKeyCommand, ConfigCommand, ConfigSet, ConnectionCommand, NewApiKey, NodeCommand,
    RequestCommand, SecretCommand, TenantCommand,
};
use crate::output::print_table;

/// Percent-encodes one path segment.
fn seg(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn query(pairs: &[(&str, Option<String>)]) -> String {
    let present: Vec<(&str, String)> = pairs
        .iter()
        .filter_map(|(k, v)| v.clone().map(|v| (*k, v)))
        .collect();
    if present.is_empty() {
        return String::new();
    }
    format!(
        "?{}",
        serde_urlencoded::to_string(present).unwrap_or_default()
    )
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Prints `value` as JSON, or the `items` of it as a table of `columns`.
fn show_list(json: bool, value: &Value, columns: &[(&str, &str)]) {
    if json {
        println!("{value:#}");
        return;
    }
    let rows: Vec<Vec<String>> = value["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|item| columns.iter().map(|(_, key)| text(&item[*key])).collect())
                .collect()
        })
        .unwrap_or_default();
    let headers: Vec<&str> = columns.iter().map(|(h, _)| *h).collect();
    print_table(&headers, &rows);
    if let (Some(total), Some(n)) = (
        value["total"].as_i64(),
        value["items"].as_array().map(Vec::len),
    ) && total > i64::try_from(n).unwrap_or(i64::MAX)
    {
        eprintln!("({n} of {total} shown; use --skip/--take)");
    }
}

fn show_object(json: bool, value: &Value) {
    if json {
        println!("{value:#}");
        return;
    }
    if let Some(obj) = value.as_object() {
        let width = obj.keys().map(String::len).max().unwrap_or(0) + 1;
        for (k, v) in obj {
            println!("{:<width$} {}", format!("{k}:"), text(v));
        }
    }
}

pub async fn tenant(api: &Api, json: bool, cmd: TenantCommand) -> anyhow::Result<()> {
    match cmd {
        TenantCommand::Create(args) => {
            let body = json!({"name": args.name, "display_name": args.display_name, "description": args.description});
            let created = api
                .call(Method::POST, "/management/tenants", Some(body))
                .await?;
            if json {
                println!("{created:#}");
            } else {
                println!(
                    "Created tenant '{}' with id {}.",
                    text(&created["name"]),
                    text(&created["id"])
                );
            }
        }
        TenantCommand::List { filter, skip, take } => {
            let q = query(&[
                ("filter", filter),
                ("skip", Some(skip.to_string())),
                ("take", Some(take.to_string())),
            ]);
            let list = api
                .call(Method::GET, &format!("/management/tenants{q}"), None)
                .await?;
            show_list(
                json,
                &list,
                &[
                    ("NAME", "name"),
                    ("ID", "id"),
                    ("CREATED", "created_at"),
                    ("DISPLAY NAME", "display_name"),
                ],
            );
        }
        TenantCommand::Show { name } => {
            let t = api
                .call(
                    Method::GET,
                    &format!("/management/tenants/{}", seg(&name)),
                    None,
                )
                .await?;
            show_object(json, &t);
        }
        TenantCommand::Update {
            name,
            display_name,
            description,
        } => {
            let body = json!({"display_name": display_name, "description": description});
            let t = api
                .call(
                    Method::PUT,
                    &format!("/management/tenants/{}", seg(&name)),
                    Some(body),
                )
                .await?;
            show_object(json, &t);
        }
        TenantCommand::Delete { name } => {
            api.call(
                Method::DELETE,
                &format!("/management/tenants/{}", seg(&name)),
                None,
            )
            .await?;
            if !json {
                println!("Deleted tenant '{name}'.");
            }
        }
        TenantCommand::Config(ConfigCommand::Get { name }) => {
            let c = api
                .call(
                    Method::GET,
                    &format!("/management/tenants/{}/config", seg(&name)),
                    None,
                )
                .await?;
            show_object(json, &c);
        }
        TenantCommand::Config(ConfigCommand::Set(set)) => config_set(api, json, *set).await?,
    }
    Ok(())
}

/// Reads the configuration, changes the named settings, writes it back.
async fn config_set(api: &Api, json: bool, set: ConfigSet) -> anyhow::Result<()> {
    let path = format!("/management/tenants/{}/config", seg(&set.name));
    let mut current: Map<String, Value> = api
        .call(Method::GET, &path, None)
        .await?
        .as_object()
        .cloned()
        .unwrap_or_default();
    let changes = [
        ("keep_alive_interval", set.keep_alive_interval, false),
        ("reconnect_min_delay", set.reconnect_min_delay, false),
        ("reconnect_max_delay", set.reconnect_max_delay, false),
        ("request_expiry", set.request_expiry, false),
        ("max_body_bytes", set.max_body_bytes, true),
        ("concurrency_limit", set.concurrency_limit, true),
        ("acknowledge_mode", set.acknowledge_mode, false),
        ("tracing", set.tracing, true),
        ("require_client_token", set.require_client_token, true),
        ("max_tunnels", set.max_tunnels, true),
    ];
    for (key, value, literal) in changes {
        let Some(value) = value else { continue };
        let v = if value == "default" {
            Value::Null
        } else if literal {
            serde_json::from_str(&value).map_err(|_| {
                crate::UsageError(format!(
                    "--{}: '{value}' is not a valid value",
                    key.replace('_', "-")
                ))
            })?
        } else {
            Value::String(value)
        };
        current.insert(key.to_owned(), v);
    }
    let updated = api
        .call(Method::PUT, &path, Some(Value::Object(current)))
        .await?;
    show_object(json, &updated);
    Ok(())
}

pub async fn secret(api: &Api, json: bool, cmd: SecretCommand) -> anyhow::Result<()> {
    match cmd {
        SecretCommand::Create {
            tenant,
            expires,
            scope,
        } => {
            let mut body = json!({"scope": scope.as_str()});
            if let Some(d) = expires {
                body["expires_in"] = json!(humantime::format_duration(d).to_string());
            }
            let created = api
                .call(
                    Method::POST,
                    &format!("/management/tenants/{}/secrets", seg(&tenant)),
                    Some(body),
                )
                .await?;
            if json {
                println!("{created:#}");
            } else {
                eprintln!(
                    "Created {scope} secret {} for tenant '{tenant}' (expires: {}).",
                    text(&created["id"]),
                    text(&created["expires_at"])
                );
                eprintln!("The secret is shown only once; store it now:");
                println!("{}", text(&created["secret"]));
            }
        }
        SecretCommand::List { tenant } => {
            let list = api
                .call(
                    Method::GET,
                    &format!("/management/tenants/{}/secrets", seg(&tenant)),
                    None,
                )
                .await?;
            show_list(
                json,
                &list,
                &[
                    ("ID", "id"),
                    ("SCOPE", "scope"),
                    ("ACTIVE", "active"),
                    ("CREATED", "created_at"),
                    ("EXPIRES", "expires_at"),
                    ("LAST USED", "last_used_at"),
                    ("REVOKED", "revoked_at"),
                ],
            );
        }
        SecretCommand::Revoke { tenant, id } => {
            api.call(
                Method::DELETE,
                &format!("/management/tenants/{}/secrets/{}", seg(&tenant), seg(&id)),
                None,
            )
            .await?;
            if !json {
                println!("Revoked secret {id} of tenant '{tenant}'.");
            }
        }
    }
    Ok(())
}

pub async fn connection(api: &Api, json: bool, cmd: ConnectionCommand) -> anyhow::Result<()> {
    match cmd {
        ConnectionCommand::List { tenant } => {
            let list = api
                .call(
                    Method::GET,
                    &format!("/management/connections{}", query(&[("tenant", tenant)])),
                    None,
                )
                .await?;
            show_list(
                json,
                &list,
                &[
                    ("ID", "id"),
                    ("TENANT", "tenant"),
                    ("NODE", "node"),
                    ("REMOTE", "remote_address"),
                    ("CONNECTED", "connected_at"),
                    ("LAST SEEN", "last_seen_at"),
                    ("VERSION", "connector_version"),
                ],
            );
        }
        ConnectionCommand::Disconnect { id } => {
            api.call(
                Method::DELETE,
                &format!("/management/connections/{}", seg(&id)),
                None,
            )
            .await?;
            if !json {
                println!("Asked the node holding connection {id} to close it.");
            }
        }
    }
    Ok(())
}

pub async fn node(api: &Api, json: bool, NodeCommand::List: NodeCommand) -> anyhow::Result<()> {
    let list = api.call(Method::GET, "/management/nodes", None).await?;
    show_list(
        json,
        &list,
        &[
            ("ID", "id"),
            ("STATE", "state"),
            ("STARTED", "started_at"),
            ("LAST HEARTBEAT", "last_heartbeat_at"),
        ],
    );
    Ok(())
}

pub async fn api_key(api: &Api, json: bool, cmd: ApiKeyCommand) -> anyhow::Result<()> {
    match cmd {
        ApiKeyCommand::Create(NewApiKey {
            name,
            read_only,
            tenant,
            expires,
        }) => {
            let expires_in = expires.map(|d| humantime::format_duration(d).to_string());
            let mut body = json!({"name": name, "tenant": tenant, "expires_in": expires_in});
            if read_only {
                body["scopes"] = json!(["management:read"]);
            }
            let created = api
                .call(Method::POST, "/management/apikeys", Some(body))
                .await?;
            if json {
                println!("{created:#}");
            } else {
                eprintln!(
                    "Created API key {} '{}' (scopes: {}). Use it as `X-Api-Key` or `Authorization: ApiKey …`.",
                    text(&created["id"]),
                    text(&created["name"]),
                    created["scopes"]
                        .as_array()
                        .map(|s| s.iter().map(text).collect::<Vec<_>>().join(" "))
                        .unwrap_or_default(),
                );
                eprintln!("The key is shown only once; store it now:");
                println!("{}", text(&created["key"]));
            }
        }
        ApiKeyCommand::List => {
            let list = api.call(Method::GET, "/management/apikeys", None).await?;
            show_list(
                json,
                &list,
                &[
                    ("ID", "id"),
                    ("NAME", "name"),
                    ("SCOPES", "scopes"),
                    ("TENANT", "tenant"),
                    ("CREATED", "created_at"),
                    ("EXPIRES", "expires_at"),
                    ("LAST USED", "last_used_at"),
                    ("ACTIVE", "active"),
                ],
            );
        }
        ApiKeyCommand::Revoke { id } => {
            api.call(
                Method::DELETE,
                &format!("/management/apikeys/{}", seg(&id)),
                None,
            )
            .await?;
            if !json {
                println!("Revoked API key {id}.");
            }
        }
    }
    Ok(())
}

pub async fn request(api: &Api, json: bool, cmd: RequestCommand) -> anyhow::Result<()> {
    let RequestCommand::List {
        tenant,
        from,
        to,
        outcome,
        skip,
        take,
    } = cmd;
    let q = query(&[
        ("tenant", tenant),
        ("from", from),
        ("to", to),
        ("outcome", outcome),
        ("skip", Some(skip.to_string())),
        ("take", Some(take.to_string())),
    ]);
    let list = api
        .call(Method::GET, &format!("/management/requests{q}"), None)
        .await?;
    show_list(
        json,
        &list,
        &[
            ("STARTED", "started_at"),
            ("TENANT", "tenant"),
            ("TARGET", "target"),
            ("METHOD", "method"),
            ("PATH", "path"),
            ("STATUS", "status"),
            ("OUTCOME", "outcome"),
            ("MS", "duration_ms"),
            ("NODE", "node"),
        ],
    );
    Ok(())
}
