DROP INDEX request_log_tenant_id_started_at;
ALTER TABLE request_log DROP COLUMN tenant_id;
DELETE FROM connections WHERE tenant_id NOT IN (SELECT id FROM tenants);
ALTER TABLE connections DROP COLUMN tenant_name;
ALTER TABLE connections DROP COLUMN secret_id;
ALTER TABLE connections DROP COLUMN expires_at;
ALTER TABLE client_secrets DROP COLUMN scope;
