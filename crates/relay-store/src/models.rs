//! Public record types. Times are unix milliseconds (`i64`), ids are UUID strings.

use std::fmt;
use std::str::FromStr;

use diesel::prelude::*;

use crate::schema::{client_secrets, connections, origins, signing_keys, tenants};

/// A tenant. `name` keeps the spelling given at creation; lookups ignore ASCII case.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = tenants)]
#[diesel(check_for_backend(diesel::sqlite::Sqlite, diesel::pg::Pg))]
pub struct Tenant {
    pub id: String,
    pub name: String,
    pub display_name: Option<String>,
    pub description: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// Input of [`Store::create_tenant`](crate::Store::create_tenant).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewTenant {
    /// 1..=64 characters of `[A-Za-z0-9_-]`, unique ignoring ASCII case.
    pub name: String,
    pub display_name: Option<String>,
    pub description: Option<String>,
}

/// Per-tenant settings. Every `None` means "use the server default".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TenantConfig {
    pub keep_alive_interval_ms: Option<i64>,
    pub reconnect_min_delay_ms: Option<i64>,
    pub reconnect_max_delay_ms: Option<i64>,
    pub request_expiry_ms: Option<i64>,
    pub max_body_bytes: Option<i64>,
    pub concurrency_limit: Option<u32>,
    pub ack_mode: Option<AckMode>,
    pub tracing: Option<bool>,
    pub require_client_auth: Option<bool>,
    /// Tunnels the tenant may hold on one relay node (`None`: the server default).
    pub max_tunnels: Option<u32>,
}

/// When a request counts as delivered (the acknowledge modes of RelayServer v3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AckMode {
    Disabled,
    ConnectorReceived,
    ConnectorFinished,
    Manual,
}

impl AckMode {
    /// The stored (and API) spelling: `disabled`, `connector_received`, `connector_finished`,
    /// `manual`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disabled => "disabled",
            Self::ConnectorReceived => "connector_received",
            Self::ConnectorFinished => "connector_finished",
            Self::Manual => "manual",
        }
    }
}

impl fmt::Display for AckMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AckMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            Self::Disabled,
            Self::ConnectorReceived,
            Self::ConnectorFinished,
            Self::Manual,
        ]
        .into_iter()
        .find(|m| m.as_str() == s)
        .ok_or_else(|| {
            format!(
                "unknown acknowledge mode '{s}' (expected disabled, connector_received, \
                 connector_finished or manual)"
            )
        })
    }
}

/// What a tenant credential (client secret) may be exchanged for. A credential has exactly
/// one scope, and one never implies the other: a connector secret cannot call a tenant that
/// requires client tokens, a client secret cannot open a tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum CredentialScope {
    /// Open tunnels for the tenant (the token scope `connector`).
    #[default]
    Connector,
    /// Call the tenant's relay path when it requires client tokens (token scope `client`).
    Client,
}

impl CredentialScope {
    /// The stored spelling, which is also the OAuth2 scope it grants.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connector => "connector",
            Self::Client => "client",
        }
    }
}

impl fmt::Display for CredentialScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CredentialScope {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "connector" => Ok(Self::Connector),
            "client" => Ok(Self::Client),
            _ => Err(format!(
                "unknown scope '{s}' (expected connector or client)"
            )),
        }
    }
}

/// A client secret without its hash.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = client_secrets)]
#[diesel(check_for_backend(diesel::sqlite::Sqlite, diesel::pg::Pg))]
pub struct SecretInfo {
    pub id: String,
    pub tenant_id: String,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub last_used_at: Option<i64>,
    /// [`CredentialScope`] spelling: `connector` or `client`.
    pub scope: String,
}

/// The credential a token request authenticated with: [`Store::verify_secret`]'s answer.
///
/// [`Store::verify_secret`]: crate::Store::verify_secret
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedSecret {
    pub tenant: Tenant,
    pub secret_id: String,
    pub scope: CredentialScope,
}

impl SecretInfo {
    /// Whether the secret would be accepted at `now_ms`.
    pub fn is_active(&self, now_ms: i64) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|e| e > now_ms)
    }
}

/// A token signing key. Published in the JWKS from `activates_at` (minus any pre-publish
/// window chosen by the identity service) until `expires_at`; used for signing from
/// `activates_at` until `retires_at`.
#[derive(Clone, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = signing_keys)]
#[diesel(check_for_backend(diesel::sqlite::Sqlite, diesel::pg::Pg))]
pub struct SigningKeyRecord {
    pub kid: String,
    /// JWS algorithm, e.g. `RS256`.
    pub algorithm: String,
    pub private_pem: String,
    /// Public key as a JWK JSON object.
    pub public_jwk: String,
    pub created_at: i64,
    pub activates_at: i64,
    pub retires_at: Option<i64>,
    pub expires_at: Option<i64>,
}

impl fmt::Debug for SigningKeyRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKeyRecord")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .field("private_pem", &"***")
            .field("public_jwk", &self.public_jwk)
            .field("created_at", &self.created_at)
            .field("activates_at", &self.activates_at)
            .field("retires_at", &self.retires_at)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// Input of [`Store::record_connection_opened`](crate::Store::record_connection_opened).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewConnection {
    /// Tunnel id, chosen by the relay node.
    pub id: String,
    pub tenant_id: String,
    /// The tenant's name when the tunnel opened, kept after the tenant is deleted.
    pub tenant_name: String,
    /// The credential the tunnel's token was issued for (`None` for name-bound tokens of
    /// another identity provider).
    pub secret_id: Option<String>,
    /// When the tunnel's token expires; the node closes the tunnel then at the latest.
    pub expires_at: Option<i64>,
    pub origin_id: Option<String>,
    pub remote_addr: String,
    pub connector_version: Option<String>,
    pub machine_name: Option<String>,
    pub connected_at: i64,
}

/// A connector tunnel, open while `disconnected_at` is `None`. Rows outlive their tenant
/// (closed) until the retention purge.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = connections)]
#[diesel(check_for_backend(diesel::sqlite::Sqlite, diesel::pg::Pg))]
pub struct ConnectionRecord {
    pub id: String,
    pub tenant_id: String,
    pub origin_id: Option<String>,
    pub remote_addr: String,
    pub connector_version: Option<String>,
    pub machine_name: Option<String>,
    pub connected_at: i64,
    pub last_seen_at: i64,
    pub disconnected_at: Option<i64>,
    /// The tenant's name when the tunnel opened (`None` on rows older than the column).
    pub tenant_name: Option<String>,
    pub secret_id: Option<String>,
    pub expires_at: Option<i64>,
}

/// A relay node. Running while `stopped_at` is `None`; it is swept as dead (and stopped)
/// when `last_heartbeat_at` falls too far behind.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = origins)]
#[diesel(check_for_backend(diesel::sqlite::Sqlite, diesel::pg::Pg))]
pub struct OriginRecord {
    pub id: String,
    pub started_at: i64,
    pub last_heartbeat_at: i64,
    pub stopped_at: Option<i64>,
}
