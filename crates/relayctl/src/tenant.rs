//! `relayctl tenant ...`

use anyhow::Context;
use relay_store::{NewTenant, Store, TenantConfig, now_ms};

use crate::cli::{TenantCommand, TenantCreate};
use crate::{find_tenant, output};

pub async fn run(store: &Store, cmd: TenantCommand) -> anyhow::Result<()> {
    match cmd {
        TenantCommand::Create(args) => create(store, args).await,
        TenantCommand::List { .. } => list(store).await,
        TenantCommand::Show { name } => show(store, &name).await,
        TenantCommand::Update { .. } | TenantCommand::Delete { .. } | TenantCommand::Config(_) => {
            Err(crate::UsageError("this command needs --management-url".into()).into())
        }
    }
}

async fn create(store: &Store, args: TenantCreate) -> anyhow::Result<()> {
    let name = args.name.clone();
    let tenant = store
        .create_tenant(NewTenant {
            name: args.name,
            display_name: args.display_name,
            description: args.description,
        })
        .await
        .with_context(|| format!("creating tenant '{name}'"))?;
    println!("Created tenant '{}' with id {}.", tenant.name, tenant.id);
    Ok(())
}

async fn list(store: &Store) -> anyhow::Result<()> {
    let tenants = store.list_tenants().await.context("listing tenants")?;
    let rows: Vec<Vec<String>> = tenants
        .into_iter()
        .map(|t| {
            let created = output::time(t.created_at);
            let display_name = output::opt_text(t.display_name.as_deref()).to_owned();
            vec![t.name, t.id, created, display_name]
        })
        .collect();
    output::print_table(&["NAME", "ID", "CREATED", "DISPLAY NAME"], &rows);
    Ok(())
}

async fn show(store: &Store, name: &str) -> anyhow::Result<()> {
    let tenant = find_tenant(store, name).await?;
    let config = store
        .tenant_config(&tenant.id)
        .await
        .context("reading tenant configuration")?;
    let secrets = store
        .list_secrets(&tenant.id)
        .await
        .context("listing secrets")?;
    let now = now_ms();
    let active = secrets.iter().filter(|s| s.is_active(now)).count();

    println!("name:          {}", tenant.name);
    println!("id:            {}", tenant.id);
    println!(
        "display name:  {}",
        output::opt_text(tenant.display_name.as_deref())
    );
    println!(
        "description:   {}",
        output::opt_text(tenant.description.as_deref())
    );
    println!("created:       {}", output::time(tenant.created_at));
    println!("updated:       {}", output::time(tenant.updated_at));
    println!(
        "secrets:       {active} active, {} revoked or expired",
        secrets.len() - active
    );
    let settings = config_lines(&config);
    if settings.is_empty() {
        println!("configuration: server defaults");
    } else {
        println!("configuration: (unlisted settings use server defaults)");
        for (key, value) in settings {
            println!("  {key}: {value}");
        }
    }
    Ok(())
}

/// The settings that differ from "server default", as `(key, value)`.
fn config_lines(c: &TenantConfig) -> Vec<(&'static str, String)> {
    let durations = [
        ("keep_alive_interval", c.keep_alive_interval_ms),
        ("reconnect_min_delay", c.reconnect_min_delay_ms),
        ("reconnect_max_delay", c.reconnect_max_delay_ms),
        ("request_expiry", c.request_expiry_ms),
    ];
    let mut lines: Vec<(&'static str, String)> = durations
        .into_iter()
        .filter_map(|(k, v)| v.map(|ms| (k, output::duration_ms(ms))))
        .collect();
    lines.extend(c.max_body_bytes.map(|v| ("max_body_bytes", v.to_string())));
    lines.extend(
        c.concurrency_limit
            .map(|v| ("concurrency_limit", v.to_string())),
    );
    lines.extend(c.ack_mode.map(|v| ("ack_mode", v.to_string())));
    lines.extend(c.tracing.map(|v| ("tracing", v.to_string())));
    lines.extend(
        c.require_client_auth
            .map(|v| ("require_client_auth", v.to_string())),
    );
    lines.extend(c.max_tunnels.map(|v| ("max_tunnels", v.to_string())));
    lines
}
