//! `relayctl secret ...`

use std::time::Duration;

use anyhow::Context;
use relay_store::{CredentialScope, SecretInfo, Store, StoreError, now_ms};

use crate::cli::SecretCommand;
use crate::{UsageError, find_tenant, output};

pub async fn run(store: &Store, cmd: SecretCommand) -> anyhow::Result<()> {
    match cmd {
        SecretCommand::Create {
            tenant,
            expires,
            scope,
        } => create(store, &tenant, expires, scope).await,
        SecretCommand::List { tenant } => list(store, &tenant).await,
        SecretCommand::Revoke { tenant, id } => revoke(store, &tenant, &id).await,
    }
}

/// Prints the notes to stderr and only the secret to stdout, so that
/// `SECRET=$(relayctl secret create acme)` captures exactly the secret.
async fn create(
    store: &Store,
    tenant_name: &str,
    expires: Option<Duration>,
    scope: CredentialScope,
) -> anyhow::Result<()> {
    let tenant = find_tenant(store, tenant_name).await?;
    let now = now_ms();
    let expires_at = expires
        .map(|d| {
            i64::try_from(d.as_millis())
                .ok()
                .and_then(|ms| now.checked_add(ms))
                .ok_or_else(|| {
                    UsageError(format!(
                        "--expires {} is too far in the future",
                        humantime::format_duration(d)
                    ))
                })
        })
        .transpose()?;
    let (info, plaintext) = store
        .create_secret(&tenant.id, expires_at, scope)
        .await
        .with_context(|| format!("creating a secret for tenant '{}'", tenant.name))?;
    eprintln!(
        "Created {scope} secret {} for tenant '{}' (expires: {}).",
        info.id,
        tenant.name,
        info.expires_at
            .map_or_else(|| "never".to_owned(), output::time)
    );
    eprintln!("The secret is shown only once; store it now:");
    println!("{plaintext}");
    Ok(())
}

async fn list(store: &Store, tenant_name: &str) -> anyhow::Result<()> {
    let tenant = find_tenant(store, tenant_name).await?;
    let secrets = store
        .list_secrets(&tenant.id)
        .await
        .context("listing secrets")?;
    let now = now_ms();
    let rows: Vec<Vec<String>> = secrets
        .iter()
        .map(|s| {
            vec![
                s.id.clone(),
                s.scope.clone(),
                status(s, now).to_owned(),
                output::time(s.created_at),
                output::opt_time(s.expires_at),
                output::opt_time(s.last_used_at),
                output::opt_time(s.revoked_at),
            ]
        })
        .collect();
    output::print_table(
        &[
            "ID",
            "SCOPE",
            "STATUS",
            "CREATED",
            "EXPIRES",
            "LAST USED",
            "REVOKED",
        ],
        &rows,
    );
    Ok(())
}

fn status(s: &SecretInfo, now: i64) -> &'static str {
    if s.revoked_at.is_some() {
        "revoked"
    } else if s.is_active(now) {
        "active"
    } else {
        "expired"
    }
}

async fn revoke(store: &Store, tenant_name: &str, id: &str) -> anyhow::Result<()> {
    let tenant = find_tenant(store, tenant_name).await?;
    let found = store
        .revoke_secret(&tenant.id, id)
        .await
        .with_context(|| format!("revoking secret {id}"))?;
    if !found {
        return Err(StoreError::NotFound)
            .with_context(|| format!("secret '{id}' of tenant '{}'", tenant.name));
    }
    println!("Revoked secret {id} of tenant '{}'.", tenant.name);
    Ok(())
}
