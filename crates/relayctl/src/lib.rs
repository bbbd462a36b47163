//! `relayctl`: operator CLI for the configuration database (migrations, tenants, client
//! secrets). It talks to the database directly through `relay-store`.
//!
//! Every command runs [`Store::migrate`] first: migrations are idempotent, so this costs one
//! query on an up-to-date database and makes any command work on a fresh one.
//!
//! With `--management-url` (or `RELAYCTL_MANAGEMENT_URL`) the tenant, secret, connection,
//! node and request commands go through the management API instead; `migrate`, `admin` and
//! `seed` always use the database (they bootstrap the API's credentials).
//!
//! Exit codes: 0 success, 1 other failure, 2 usage (clap's, a missing URL, or a value the
//! store or API rejects as invalid), 3 not found, 4 authentication or permission refused,
//! 5 server error or server unreachable, 6 conflict (already exists).
//!
//! Module map:
//! - `cli`: clap definitions ([`Cli`], [`Command`]).
//! - `tenant`, `secret`: the subcommands against the database.
//! - `admin`: management clients, API keys and `seed`, against the database.
//! - `api`: the management API client (authentication, token cache, errors);
//!   `remote`: the commands through it.
//! - `output`: tables and time formatting.

mod admin;
mod api;
mod cli;
mod output;
mod remote;
mod secret;
mod tenant;

use std::fmt;

use anyhow::Context;
use relay_store::{Store, StoreError};

pub use admin::{SEED_TENANTS, is_local_database};
pub use api::{RemoteError, token_cache_path};
pub use cli::{Cli, Command, SecretCommand, TenantCommand, TenantCreate};

/// Exit code for a usage error, as clap uses.
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_NOT_FOUND: u8 = 3;
pub const EXIT_AUTH: u8 = 4;
pub const EXIT_SERVER: u8 = 5;
pub const EXIT_CONFLICT: u8 = 6;
pub const EXIT_OTHER: u8 = 1;

/// An invocation that cannot work as given (exit code 2).
#[derive(Debug)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Runs one command. Output goes to stdout; notes meant for the operator only to stderr.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let through_api = cli.management_url.is_some()
        && !matches!(
            cli.command,
            Command::Migrate | Command::Admin(_) | Command::Seed { .. }
        );
    if through_api || matches!(cli.command, Command::Login) {
        return run_remote(cli).await;
    }
    if matches!(
        cli.command,
        Command::Connection(_) | Command::Node(_) | Command::Request(_) | Command::ApiKey(_)
    ) {
        return Err(UsageError(
            "this command needs --management-url (or RELAYCTL_MANAGEMENT_URL)".into(),
        )
        .into());
    }
    let url = cli.database_url.ok_or_else(|| {
        UsageError("no database URL: pass --database-url or set RELAY_DATABASE_URL".into())
    })?;
    if matches!(cli.command, Command::Seed { dev: false }) && !is_local_database(&url) {
        return Err(UsageError(
            "refusing to seed a database that is not on this machine; pass --dev if you mean it"
                .into(),
        )
        .into());
    }
    let store = Store::connect(&url).await.context("opening the database")?;
    store.migrate().await.context("migrating the database")?;
    match cli.command {
        Command::Migrate => {
            println!("Database is up to date.");
            Ok(())
        }
        Command::Tenant(cmd) => tenant::run(&store, cmd).await,
        Command::Secret(cmd) => secret::run(&store, cmd).await,
        Command::Admin(cmd) => admin::run(&store, cmd).await,
        Command::Seed { dev } => admin::seed(&store, &url, dev).await,
        Command::Login
        | Command::Connection(_)
        | Command::Node(_)
        | Command::Request(_)
        | Command::ApiKey(_) => {
            Err(UsageError("this command needs --management-url".into()).into())
        }
    }
}

async fn run_remote(cli: Cli) -> anyhow::Result<()> {
    if matches!(cli.command, Command::Login) {
        return api::login(&cli).await;
    }
    let api = api::Api::connect(&cli).await?;
    let json = cli.json;
    match cli.command {
        Command::Tenant(cmd) => remote::tenant(&api, json, cmd).await,
        Command::Secret(cmd) => remote::secret(&api, json, cmd).await,
        Command::Connection(cmd) => remote::connection(&api, json, cmd).await,
        Command::Node(cmd) => remote::node(&api, json, cmd).await,
        Command::Request(cmd) => remote::request(&api, json, cmd).await,
        Command::ApiKey(cmd) => remote::api_key(&api, json, cmd).await,
        Command::Migrate | Command::Admin(_) | Command::Seed { .. } | Command::Login => {
            Err(UsageError("this command uses --database-url".into()).into())
        }
    }
}

/// The process exit code for an error returned by [`run`], decided by the first
/// classifiable error in its chain.
pub fn exit_code(error: &anyhow::Error) -> u8 {
    for cause in error.chain() {
        if cause.is::<UsageError>() {
            return EXIT_USAGE;
        }
        if let Some(remote) = cause.downcast_ref::<RemoteError>() {
            return remote.exit_code();
        }
        if let Some(store_error) = cause.downcast_ref::<StoreError>() {
            return match store_error {
                StoreError::NotFound => EXIT_NOT_FOUND,
                StoreError::Conflict => EXIT_CONFLICT,
                StoreError::Invalid { .. } => EXIT_USAGE,
                _ => EXIT_OTHER,
            };
        }
    }
    EXIT_OTHER
}

/// Looks a tenant up by name; a missing one is a [`StoreError::NotFound`] naming it.
async fn find_tenant(store: &Store, name: &str) -> anyhow::Result<relay_store::Tenant> {
    store
        .tenant_by_name(name)
        .await
        .with_context(|| format!("looking up tenant '{name}'"))?
        .ok_or(StoreError::NotFound)
        .with_context(|| format!("tenant '{name}'"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_first_classified_cause() {
        let not_found = anyhow::Error::new(StoreError::NotFound).context("tenant 'x'");
        assert_eq!(exit_code(&not_found), EXIT_NOT_FOUND);
        let conflict = anyhow::Error::new(StoreError::Conflict).context("creating");
        assert_eq!(exit_code(&conflict), EXIT_CONFLICT);
        let invalid = anyhow::Error::new(StoreError::Invalid {
            field: "name",
            message: "bad".into(),
        });
        assert_eq!(exit_code(&invalid), EXIT_USAGE);
        assert_eq!(
            exit_code(&anyhow::Error::new(UsageError("x".into()))),
            EXIT_USAGE
        );
        assert_eq!(exit_code(&anyhow::anyhow!("other")), EXIT_OTHER);
    }

    #[test]
    fn cli_definition_is_consistent() {
        <Cli as clap::CommandFactory>::command().debug_assert();
    }
}
