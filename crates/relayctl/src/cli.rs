//! Command-line interface definition (clap derive).

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// Operator CLI for Relay's configuration database.
///
/// Every command first applies pending database migrations (they are idempotent), so a new
/// SQLite file or an empty PostgreSQL database is ready after any command.
#[derive(Debug, Parser)]
#[command(name = "relayctl", version, about, long_about)]
pub struct Cli {
    /// Database URL: sqlite:///path/relay.db, sqlite:relative.db or postgres://user@host/db.
    #[arg(
        long,
        env = "RELAY_DATABASE_URL",
        global = true,
        value_name = "URL",
        hide_env_values = true
    )]
    pub database_url: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply pending database migrations.
    Migrate,
    /// Create, list and show tenants.
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Create, list and revoke client secrets of a tenant.
    #[command(subcommand)]
    Secret(SecretCommand),
}

#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Create a tenant (1-64 characters of A-Z, a-z, 0-9, '-', '_'; unique ignoring case).
    Create(TenantCreate),
    /// List all tenants.
    List,
    /// Show a tenant with its settings and secret counts.
    Show {
        /// Tenant name (case-insensitive).
        name: String,
    },
}

#[derive(Debug, Args)]
pub struct TenantCreate {
    /// Tenant name; connectors use it as their client id.
    pub name: String,
    /// Human-readable name.
    #[arg(long)]
    pub display_name: Option<String>,
    /// Free-text description.
    #[arg(long)]
    pub description: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Create a client secret. The secret is printed once, as the last line of stdout.
    Create {
        /// Tenant name (case-insensitive).
        tenant: String,
        /// Lifetime, e.g. 30d, 12h or "1year 6months"; without it the secret never expires.
        #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
        expires: Option<Duration>,
    },
    /// List the secrets of a tenant (never their values).
    List {
        /// Tenant name (case-insensitive).
        tenant: String,
    },
    /// Revoke a secret; tokens already issued stay valid until they expire.
    Revoke {
        /// Tenant name (case-insensitive).
        tenant: String,
        /// Secret id, as shown by `secret list`.
        id: String,
    },
}
