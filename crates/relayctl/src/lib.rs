//! `relayctl`: operator CLI for the configuration database (migrations, tenants, client
//! secrets). It talks to the database directly through `relay-store`.
//!
//! Every command runs [`Store::migrate`] first: migrations are idempotent, so this costs one
//! query on an up-to-date database and makes any command work on a fresh one.
//!
//! Exit codes: 0 success, 1 other failure, 2 usage (clap's, a missing database URL, or a
//! value the store rejects as invalid), 3 not found, 4 conflict (already exists).
//!
//! Module map:
//! - `cli`: clap definitions ([`Cli`], [`Command`]).
//! - `tenant`, `secret`: the subcommands.
//! - `output`: tables and time formatting.

mod cli;
mod output;
mod secret;
mod tenant;

use std::fmt;

use anyhow::Context;
use relay_store::{Store, StoreError};

pub use cli::{Cli, Command, SecretCommand, TenantCommand, TenantCreate};

/// Exit code for a usage error, as clap uses.
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_NOT_FOUND: u8 = 3;
pub const EXIT_CONFLICT: u8 = 4;
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
    let url = cli.database_url.ok_or_else(|| {
        UsageError("no database URL: pass --database-url or set RELAY_DATABASE_URL".into())
    })?;
    let store = Store::connect(&url).await.context("opening the database")?;
    store.migrate().await.context("migrating the database")?;
    match cli.command {
        Command::Migrate => {
            println!("Database is up to date.");
            Ok(())
        }
        Command::Tenant(cmd) => tenant::run(&store, cmd).await,
        Command::Secret(cmd) => secret::run(&store, cmd).await,
    }
}

/// The process exit code for an error returned by [`run`], decided by the first
/// classifiable error in its chain.
pub fn exit_code(error: &anyhow::Error) -> u8 {
    for cause in error.chain() {
        if cause.is::<UsageError>() {
            return EXIT_USAGE;
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
