ALTER TABLE api_keys DROP COLUMN created_by_key;
ALTER TABLE api_keys DROP COLUMN created_by_client;
