DROP TABLE IF EXISTS acme_locks;
DROP TABLE IF EXISTS acme_storage;
