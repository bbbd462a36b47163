DROP TABLE connections;
DROP TABLE origins;
DROP TABLE signing_keys;
DROP TABLE client_secrets;
DROP TABLE tenant_configs;
DROP TABLE tenants;
