-- Initial schema. Portable types only: TEXT ids (UUID strings), BIGINT unix milliseconds,
-- BOOLEAN flags. Keep this file and migrations/postgres/<same name>/up.sql equivalent.

CREATE TABLE tenants (
    id           TEXT PRIMARY KEY NOT NULL,
    name         TEXT NOT NULL,
    name_lower   TEXT NOT NULL UNIQUE,
    display_name TEXT,
    description  TEXT,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL
);

-- NULL in any setting column means "use the server default".
CREATE TABLE tenant_configs (
    tenant_id              TEXT PRIMARY KEY NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    keep_alive_interval_ms BIGINT,
    reconnect_min_delay_ms BIGINT,
    reconnect_max_delay_ms BIGINT,
    request_expiry_ms      BIGINT,
    max_body_bytes         BIGINT,
    concurrency_limit      BIGINT,
    ack_mode               TEXT,
    tracing                BOOLEAN,
    require_client_auth    BOOLEAN,
    updated_at             BIGINT NOT NULL
);

CREATE TABLE client_secrets (
    id           TEXT PRIMARY KEY NOT NULL,
    tenant_id    TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    hash         TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT,
    revoked_at   BIGINT,
    last_used_at BIGINT
);
CREATE INDEX client_secrets_tenant_id ON client_secrets (tenant_id);

CREATE TABLE signing_keys (
    kid          TEXT PRIMARY KEY NOT NULL,
    algorithm    TEXT NOT NULL,
    private_pem  TEXT NOT NULL,
    public_jwk   TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    activates_at BIGINT NOT NULL,
    retires_at   BIGINT,
    expires_at   BIGINT
);
CREATE INDEX signing_keys_activates_at ON signing_keys (activates_at);

CREATE TABLE origins (
    id                TEXT PRIMARY KEY NOT NULL,
    started_at        BIGINT NOT NULL,
    last_heartbeat_at BIGINT NOT NULL,
    stopped_at        BIGINT
);
CREATE INDEX origins_last_heartbeat_at ON origins (last_heartbeat_at);

-- origin_id has no foreign key yet: nodes do not register in `origins` so far.
CREATE TABLE connections (
    id                TEXT PRIMARY KEY NOT NULL,
    tenant_id         TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    origin_id         TEXT,
    remote_addr       TEXT NOT NULL,
    connector_version TEXT,
    machine_name      TEXT,
    connected_at      BIGINT NOT NULL,
    last_seen_at      BIGINT NOT NULL,
    disconnected_at   BIGINT
);
CREATE INDEX connections_tenant_id ON connections (tenant_id);
CREATE INDEX connections_origin_id ON connections (origin_id);
CREATE INDEX connections_open ON connections (connected_at) WHERE disconnected_at IS NULL;
