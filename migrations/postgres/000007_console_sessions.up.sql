-- Issue 19: the web console's sign-in sessions, kept in the store so that a session opened on one
-- gateway is good on every gateway of the database and survives a restart. The cookie's value is
-- never stored: id_hash is its SHA-256, so that a read of this table opens no session.
CREATE TABLE IF NOT EXISTS console_sessions (
    id_hash text PRIMARY KEY,
    csrf text NOT NULL,
    actor text NOT NULL,
    created_at bigint NOT NULL,
    expires_at bigint NOT NULL
);
CREATE INDEX IF NOT EXISTS console_sessions_expires ON console_sessions (expires_at);
