-- Tunnels one tenant may hold per relay node (NULL: the server default, 32).
ALTER TABLE tenant_configs ADD COLUMN max_tunnels BIGINT;
