-- Tenant lifecycle: credentials with one scope each, connection history that outlives its
-- tenant, the request log keyed by tenant id. Keep this file and the other backend's
-- <same name>/up.sql equivalent.

-- Every credential grants one scope: `connector` (open tunnels) or `client` (call a tenant
-- that requires client tokens). Secrets created before this migration are connector secrets.
ALTER TABLE client_secrets ADD COLUMN scope TEXT NOT NULL DEFAULT 'connector';

-- Connection rows are history: they stay (closed) when their tenant is deleted, until the
-- retention purge.
ALTER TABLE connections DROP CONSTRAINT IF EXISTS connections_tenant_id_fkey;
ALTER TABLE connections ADD COLUMN tenant_name TEXT;
ALTER TABLE connections ADD COLUMN secret_id TEXT;
ALTER TABLE connections ADD COLUMN expires_at BIGINT;
UPDATE connections c SET tenant_name = t.name FROM tenants t WHERE t.id = c.tenant_id;

-- The tenant's id, so a re-created tenant of the same name does not see its predecessor's
-- rows. Rows written before this migration get the id of the tenant that has the name now.
ALTER TABLE request_log ADD COLUMN tenant_id TEXT;
UPDATE request_log r SET tenant_id = t.id FROM tenants t WHERE t.name_lower = r.tenant;
CREATE INDEX request_log_tenant_id_started_at ON request_log (tenant_id, started_at);
