DROP TABLE IF EXISTS gateway_secrets;
ALTER TABLE domains DROP COLUMN policy;
