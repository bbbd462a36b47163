ALTER TABLE tenant_configs DROP COLUMN max_tunnels;
