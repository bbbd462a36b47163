ALTER TABLE connections DROP COLUMN disconnect_requested_at;
DROP TABLE request_log;
DROP TABLE api_keys;
DROP TABLE management_clients;
