-- Tenant lifecycle: credentials with one scope each, connection history that outlives its
-- tenant, the request log keyed by tenant id. Keep this file and the other backend's
-- <same name>/up.sql equivalent.

-- Every credential grants one scope: `connector` (open tunnels) or `client` (call a tenant
-- that requires client tokens). Secrets created before this migration are connector secrets.
ALTER TABLE client_secrets ADD COLUMN scope TEXT NOT NULL DEFAULT 'connector';

-- Connection rows are history: they stay (closed) when their tenant is deleted, until the
-- retention purge. SQLite cannot drop a foreign key, so the table is rebuilt without it.
CREATE TABLE connections_new (
    id                      TEXT PRIMARY KEY NOT NULL,
    tenant_id               TEXT NOT NULL,
    origin_id               TEXT,
    remote_addr             TEXT NOT NULL,
    connector_version       TEXT,
    machine_name            TEXT,
    connected_at            BIGINT NOT NULL,
    last_seen_at            BIGINT NOT NULL,
    disconnected_at         BIGINT,
    disconnect_requested_at BIGINT,
    tenant_name             TEXT,
    secret_id               TEXT,
    expires_at              BIGINT
);
INSERT INTO connections_new (id, tenant_id, origin_id, remote_addr, connector_version,
    machine_name, connected_at, last_seen_at, disconnected_at, disconnect_requested_at,
    tenant_name)
SELECT c.id, c.tenant_id, c.origin_id, c.remote_addr, c.connector_version, c.machine_name,
    c.connected_at, c.last_seen_at, c.disconnected_at, c.disconnect_requested_at,
    (SELECT t.name FROM tenants t WHERE t.id = c.tenant_id)
FROM connections c;
DROP TABLE connections;
ALTER TABLE connections_new RENAME TO connections;
CREATE INDEX connections_tenant_id ON connections (tenant_id);
CREATE INDEX connections_origin_id ON connections (origin_id);
CREATE INDEX connections_open ON connections (connected_at) WHERE disconnected_at IS NULL;

-- The tenant's id, so a re-created tenant of the same name does not see its predecessor's
-- rows. Rows written before this migration get the id of the tenant that has the name now.
ALTER TABLE request_log ADD COLUMN tenant_id TEXT;
UPDATE request_log SET tenant_id = (SELECT t.id FROM tenants t WHERE t.name_lower = request_log.tenant);
CREATE INDEX request_log_tenant_id_started_at ON request_log (tenant_id, started_at);
