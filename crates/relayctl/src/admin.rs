//! Commands straight against the database: management credentials (bootstrap) and `seed`.

use anyhow::Context;
use relay_store::{NewTenant, Store, now_ms};

use crate::cli::{AdminCommand, NewApiKey};
use crate::{UsageError, find_tenant, output};

const READ: &str = "management:read";
const READ_WRITE: &str = "management:read management:write";

/// The development tenants of `relayctl seed` and their (public, well-known) secrets.
pub const SEED_TENANTS: [(&str, &str); 2] = [
    (
        "TestTenant1",
        "TestTenant1-dev-secret-do-not-use-in-production",
    ),
    (
        "TestTenant2",
        "TestTenant2-dev-secret-do-not-use-in-production",
    ),
];

pub async fn run(store: &Store, cmd: AdminCommand) -> anyhow::Result<()> {
    match cmd {
        AdminCommand::Create {
            name,
            read_only,
            tenant,
        } => {
            let tenant_id = scope_tenant(store, tenant.as_deref()).await?;
            let scopes = if read_only { READ } else { READ_WRITE };
            let (client, secret) = store
                .create_management_client(&name, scopes, tenant_id.as_deref())
                .await
                .with_context(|| format!("creating management client '{name}'"))?;
            eprintln!(
                "Created management client '{}' (scopes: {scopes}{}).",
                client.name,
                tenant.map(|t| format!(", tenant {t}")).unwrap_or_default()
            );
            eprintln!("The secret is shown only once; store it now:");
            println!("{secret}");
        }
        AdminCommand::List => {
            let rows: Vec<Vec<String>> = store
                .list_management_clients()
                .await
                .context("listing management clients")?
                .into_iter()
                .map(|c| {
                    vec![
                        c.name,
                        c.scopes,
                        output::opt_text(c.tenant_id.as_deref()).to_owned(),
                        output::time(c.created_at),
                        output::opt_time(c.last_used_at),
                        output::opt_time(c.revoked_at),
                    ]
                })
                .collect();
            output::print_table(
                &[
                    "NAME",
                    "SCOPES",
                    "TENANT ID",
                    "CREATED",
                    "LAST USED",
                    "REVOKED",
                ],
                &rows,
            );
        }
        AdminCommand::Revoke { name } => {
            if !store
                .revoke_management_client(&name)
                .await
                .context("revoking")?
            {
                return Err(relay_store::StoreError::NotFound)
                    .with_context(|| format!("management client '{name}'"));
            }
            println!("Revoked management client '{name}'.");
        }
        AdminCommand::ApiKey(NewApiKey {
            name,
            read_only,
            tenant,
            expires,
        }) => {
            let tenant_id = scope_tenant(store, tenant.as_deref()).await?;
            let scopes = if read_only { READ } else { READ_WRITE };
            let expires_at = expires
                .and_then(|d| i64::try_from(d.as_millis()).ok())
                .map(|ms| now_ms().saturating_add(ms));
            let (info, key) = store
                .create_api_key(&name, scopes, tenant_id.as_deref(), expires_at)
                .await
                .with_context(|| format!("creating API key '{name}'"))?;
            eprintln!(
                "Created API key {} '{}' (scopes: {scopes}). Use it as `X-Api-Key` or `Authorization: ApiKey …`.",
                info.id, info.name
            );
            eprintln!("The key is shown only once; store it now:");
            println!("{key}");
        }
        AdminCommand::ApiKeys => {
            let rows: Vec<Vec<String>> = store
                .list_api_keys()
                .await
                .context("listing API keys")?
                .into_iter()
                .map(|k| {
                    vec![
                        k.id,
                        k.name,
                        k.scopes,
                        output::time(k.created_at),
                        output::opt_time(k.expires_at),
                        output::opt_time(k.last_used_at),
                        output::opt_time(k.revoked_at),
                    ]
                })
                .collect();
            output::print_table(
                &[
                    "ID",
                    "NAME",
                    "SCOPES",
                    "CREATED",
                    "EXPIRES",
                    "LAST USED",
                    "REVOKED",
                ],
                &rows,
            );
        }
        AdminCommand::RevokeApiKey { id } => {
            if !store.revoke_api_key(&id).await.context("revoking")? {
                return Err(relay_store::StoreError::NotFound)
                    .with_context(|| format!("API key '{id}'"));
            }
            println!("Revoked API key {id}.");
        }
    }
    Ok(())
}

async fn scope_tenant(store: &Store, tenant: Option<&str>) -> anyhow::Result<Option<String>> {
    Ok(match tenant {
        Some(name) => Some(find_tenant(store, name).await?.id),
        None => None,
    })
}

/// Whether `url` names a database on this machine (SQLite file, or PostgreSQL on loopback
/// or a Unix socket).
pub fn is_local_database(url: &str) -> bool {
    if url.starts_with("sqlite:") {
        return true;
    }
    let Some(rest) = url.split_once("://").map(|(_, r)| r) else {
        return false;
    };
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(v6) = host_port.strip_prefix('[') {
        v6.split(']').next().unwrap_or_default()
    } else {
        host_port.split(':').next().unwrap_or_default()
    };
    matches!(host, "" | "localhost" | "127.0.0.1" | "::1")
}

/// Creates the development tenants with their known secrets; running it again changes
/// nothing.
pub async fn seed(store: &Store, url: &str, dev: bool) -> anyhow::Result<()> {
    if !dev && !is_local_database(url) {
        return Err(UsageError(
            "refusing to seed a database that is not on this machine; pass --dev if you mean it"
                .into(),
        )
        .into());
    }
    for (name, secret) in SEED_TENANTS {
        let tenant = match store.tenant_by_name(name).await? {
            Some(t) => t,
            None => store
                .create_tenant(NewTenant {
                    name: name.to_owned(),
                    display_name: Some(format!("{name} (development)")),
                    description: Some("Created by relayctl seed".into()),
                })
                .await
                .with_context(|| format!("creating tenant '{name}'"))?,
        };
        if store
            .verify_secret(name, secret, now_ms(), None)
            .await?
            .is_none()
        {
            store
                .add_known_secret(&tenant.id, secret)
                .await
                .with_context(|| format!("adding the development secret of '{name}'"))?;
        }
        println!("{name}\t{secret}");
    }
    eprintln!(
        "Development tenants ready (name, secret above). Never use these secrets in production."
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_databases() {
        assert!(is_local_database("sqlite:///var/lib/relay.db"));
        assert!(is_local_database("postgres://u:p@localhost/db"));
        assert!(is_local_database("postgres://127.0.0.1:5432/db"));
        assert!(is_local_database("postgresql://u@[::1]:5432/db"));
        assert!(is_local_database("postgres:///db?host=/run/postgresql"));
        assert!(!is_local_database("postgres://u@db.example.com/db"));
        assert!(!is_local_database("postgres://u:p@10.0.0.5/db"));
    }
}
