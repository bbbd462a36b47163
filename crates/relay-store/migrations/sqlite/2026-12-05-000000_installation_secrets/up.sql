-- Secrets of the installation that every node shares, created on first use (e.g. the key that
-- signs manual acknowledge URLs). Keep this file and the other backend's <same name>/up.sql
-- equivalent.
CREATE TABLE installation_secrets (
    name       TEXT PRIMARY KEY NOT NULL,
    value      TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
