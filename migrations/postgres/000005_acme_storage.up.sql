-- Issue 18: certificates, the ACME account and pending challenges, shared by every gateway on this
-- database (internal/gateway/acme.PGStorage). Not ent tables: only the acme package reads them.
-- IF NOT EXISTS: the upgrade tests run this file again after moving the version back.
CREATE TABLE IF NOT EXISTS acme_storage (
    -- "accounts/<ca>/<email>/key.pem", "certificates/<name>.crt", "challenges/http-01/<token>", ...
    key text PRIMARY KEY,
    value bytea NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
-- One row per lock held: an order of one name, or the registration of the account. The holder
-- pushes expires_at forward while it works; another gateway may take a row whose time has passed.
CREATE TABLE IF NOT EXISTS acme_locks (
    name text PRIMARY KEY,
    holder text NOT NULL,
    expires_at timestamptz NOT NULL
);
