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

    /// Management API base URL (e.g. http://127.0.0.1:5004). When set, tenant, secret,
    /// connection, node and request commands go through the API instead of the database.
    #[arg(
        long,
        env = "RELAYCTL_MANAGEMENT_URL",
        global = true,
        value_name = "URL"
    )]
    pub management_url: Option<String>,

    /// Management client id (with --client-secret: a token is fetched for this run).
    #[arg(long, env = "RELAYCTL_CLIENT_ID", global = true, value_name = "ID")]
    pub client_id: Option<String>,

    /// Management client secret.
    #[arg(
        long,
        env = "RELAYCTL_CLIENT_SECRET",
        global = true,
        value_name = "SECRET",
        hide_env_values = true
    )]
    pub client_secret: Option<String>,

    /// API key (`rk_…`) instead of client credentials.
    #[arg(
        long,
        env = "RELAYCTL_API_KEY",
        global = true,
        value_name = "KEY",
        hide_env_values = true
    )]
    pub api_key: Option<String>,

    /// Token endpoint; default: the one named in the API's OpenAPI document.
    #[arg(long, env = "RELAYCTL_TOKEN_URL", global = true, value_name = "URL")]
    pub token_url: Option<String>,

    /// Print JSON (the API's answer) instead of tables.
    #[arg(long, global = true)]
    pub json: bool,

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
    /// Management credentials in the database: clients and API keys (bootstrap).
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Create the development tenants TestTenant1 and TestTenant2 with known secrets.
    Seed {
        /// Allow seeding a database that is not on this machine.
        #[arg(long)]
        dev: bool,
    },
    /// Get a token with --client-id/--client-secret and cache it for later commands.
    Login,
    /// Live connector tunnels (API only).
    #[command(subcommand, alias = "connections")]
    Connection(ConnectionCommand),
    /// Relay nodes (API only).
    #[command(subcommand, alias = "nodes")]
    Node(NodeCommand),
    /// The request log (API only).
    #[command(subcommand, alias = "requests")]
    Request(RequestCommand),
    /// API keys for automation (API only; `admin api-key` creates the first one in the
    /// database).
    #[command(subcommand, name = "apikey", alias = "apikeys")]
    ApiKey(ApiKeyCommand),
}

/// An API key to create, through the database (`admin api-key`) or the API (`apikey create`).
#[derive(Debug, Args)]
pub struct NewApiKey {
    /// A label for the key.
    pub name: String,
    /// Only scope management:read (default: read and write; through the API never more than
    /// the caller has).
    #[arg(long)]
    pub read_only: bool,
    /// Restrict the key to this tenant.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Lifetime, e.g. 90d (default: no expiry).
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub expires: Option<Duration>,
}

#[derive(Debug, Subcommand)]
pub enum ApiKeyCommand {
    /// Create an API key; printed once, as the last line of stdout.
    Create(NewApiKey),
    /// List API keys (never their values).
    List,
    /// Revoke an API key by id.
    Revoke { id: String },
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Create a management client; its secret is printed once, as the last line of stdout.
    Create {
        /// Client id (1-64 characters of A-Z, a-z, 0-9, '-', '_').
        name: String,
        /// Only scope management:read.
        #[arg(long)]
        read_only: bool,
        /// Restrict the client to this tenant.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// List management clients.
    List,
    /// Revoke a management client (tokens already issued stay valid until they expire).
    Revoke { name: String },
    /// Create an API key; printed once, as the last line of stdout.
    ApiKey(NewApiKey),
    /// List API keys (never their values).
    ApiKeys,
    /// Revoke an API key by id.
    RevokeApiKey { id: String },
}

#[derive(Debug, Subcommand)]
pub enum ConnectionCommand {
    /// List live tunnels on all nodes.
    List {
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Ask the node holding the tunnel to close it (the connector reconnects).
    Disconnect { id: String },
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// List relay nodes.
    List,
}

#[derive(Debug, Subcommand)]
pub enum RequestCommand {
    /// List logged requests, newest first.
    List {
        #[arg(long)]
        tenant: Option<String>,
        /// RFC 3339 time or unix milliseconds.
        #[arg(long)]
        from: Option<String>,
        #[arg(long)]
        to: Option<String>,
        /// succeeded, failed, expired, aborted or errored.
        #[arg(long)]
        outcome: Option<String>,
        #[arg(long, default_value_t = 0)]
        skip: u64,
        #[arg(long, default_value_t = 50)]
        take: u64,
    },
}

#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Create a tenant (1-64 characters of A-Z, a-z, 0-9, '-', '_'; unique ignoring case).
    Create(TenantCreate),
    /// List tenants.
    List {
        /// Only names containing this text (API only).
        #[arg(long)]
        filter: Option<String>,
        #[arg(long, default_value_t = 0)]
        skip: u64,
        #[arg(long, default_value_t = 100)]
        take: u64,
    },
    /// Show a tenant with its settings and secret counts.
    Show {
        /// Tenant name (case-insensitive).
        name: String,
    },
    /// Replace display name and description (API only).
    Update {
        name: String,
        #[arg(long)]
        display_name: Option<String>,
        #[arg(long)]
        description: Option<String>,
    },
    /// Delete a tenant with its configuration and secrets (API only).
    Delete { name: String },
    /// Per-tenant configuration (API only).
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Show the tenant's configuration (null = server default).
    Get { name: String },
    /// Change settings; unnamed ones keep their value, `default` resets one.
    Set(Box<ConfigSet>),
}

#[derive(Debug, Args)]
pub struct ConfigSet {
    pub name: String,
    /// e.g. 15s
    #[arg(long)]
    pub keep_alive_interval: Option<String>,
    #[arg(long)]
    pub reconnect_min_delay: Option<String>,
    #[arg(long)]
    pub reconnect_max_delay: Option<String>,
    #[arg(long)]
    pub request_expiry: Option<String>,
    /// bytes
    #[arg(long)]
    pub max_body_bytes: Option<String>,
    #[arg(long)]
    pub concurrency_limit: Option<String>,
    /// disabled, connector-received, connector-finished or manual
    #[arg(long)]
    pub acknowledge_mode: Option<String>,
    /// true or false
    #[arg(long)]
    pub tracing: Option<String>,
    /// true or false
    #[arg(long)]
    pub require_client_token: Option<String>,
    /// Tunnels the tenant may hold on one relay node (1-1024; server default 32)
    #[arg(long)]
    pub max_tunnels: Option<String>,
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
        /// What the secret may be exchanged for: `connector` (open tunnels) or `client` (call
        /// a tenant that requires client tokens). One never implies the other.
        #[arg(long, default_value = "connector", value_parser = parse_scope)]
        scope: relay_store::CredentialScope,
    },
    /// List the secrets of a tenant (never their values).
    List {
        /// Tenant name (case-insensitive).
        tenant: String,
    },
    /// Revoke a secret; the relay closes the tunnels opened with it within seconds and
    /// refuses its tokens.
    Revoke {
        /// Tenant name (case-insensitive).
        tenant: String,
        /// Secret id, as shown by `secret list`.
        id: String,
    },
}

fn parse_scope(s: &str) -> Result<relay_store::CredentialScope, String> {
    s.parse()
}
