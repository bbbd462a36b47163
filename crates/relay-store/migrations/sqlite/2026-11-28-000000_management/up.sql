-- Management credentials, the request log, and disconnect requests for tunnels.
-- Keep this file and the other backend's <same name>/up.sql equivalent.

-- Operator clients of the management API (OAuth2 client credentials at relay-identity).
-- `scopes` is space separated (management:read, management:write); `tenant_id` set means
-- the client sees that tenant only.
CREATE TABLE management_clients (
    id           TEXT PRIMARY KEY NOT NULL,
    name         TEXT NOT NULL,
    name_lower   TEXT NOT NULL UNIQUE,
    hash         TEXT NOT NULL,
    scopes       TEXT NOT NULL,
    tenant_id    TEXT REFERENCES tenants (id) ON DELETE CASCADE,
    created_at   BIGINT NOT NULL,
    revoked_at   BIGINT,
    last_used_at BIGINT
);

-- API keys for automation: only the SHA-256 of the (high-entropy, random) key is stored.
CREATE TABLE api_keys (
    id           TEXT PRIMARY KEY NOT NULL,
    name         TEXT NOT NULL,
    key_hash     TEXT NOT NULL UNIQUE,
    scopes       TEXT NOT NULL,
    tenant_id    TEXT REFERENCES tenants (id) ON DELETE CASCADE,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT,
    revoked_at   BIGINT,
    last_used_at BIGINT
);

-- One row per relayed request. `tenant` is the lower-cased tenant name, so rows outlive a
-- deleted tenant until the retention purge removes them.
CREATE TABLE request_log (
    id             TEXT PRIMARY KEY NOT NULL,
    tenant         TEXT NOT NULL,
    target         TEXT NOT NULL,
    method         TEXT NOT NULL,
    path           TEXT NOT NULL,
    status         BIGINT NOT NULL,
    request_bytes  BIGINT,
    response_bytes BIGINT,
    duration_ms    BIGINT NOT NULL,
    outcome        TEXT NOT NULL,
    node           TEXT NOT NULL,
    started_at     BIGINT NOT NULL
);
CREATE INDEX request_log_started_at ON request_log (started_at);
CREATE INDEX request_log_tenant_started_at ON request_log (tenant, started_at);

-- Set by the management API; the node holding the tunnel closes it.
ALTER TABLE connections ADD COLUMN disconnect_requested_at BIGINT;
