-- Who created an API key, so that the key works only while its creator does: the management
-- client whose token created it, or the API key that did. Both NULL: created directly in the
-- database (`relayctl admin api-key`) or before this migration; such a key lives until it is
-- revoked or expires. No foreign keys on purpose: a creator deleted must make the key
-- unusable, not turn it into a creator-less one (ON DELETE SET NULL would).
-- Keep this file and the other backend's <same name>/up.sql equivalent.
ALTER TABLE api_keys ADD COLUMN created_by_client TEXT;
ALTER TABLE api_keys ADD COLUMN created_by_key TEXT;
