-- Issue 15: a domain's access policy, and the gateway-wide secrets (the SSO session key).
-- Matches ent/schema/domain.go and ent/schema/gatewaysecret.go. Both statements go to the server in
-- one simple query, which Postgres runs as one transaction: either both exist afterwards or neither.

-- The policy as JSON (policy.Spec, passwords already hashed); '' is no policy. Kept in the row so
-- that unregistering a domain removes its policy with it.
ALTER TABLE domains ADD COLUMN policy text NOT NULL DEFAULT '';

-- Secrets of the gateway as a whole, by name, shared by every gateway on this database.
CREATE TABLE gateway_secrets (
    name       character varying(64) PRIMARY KEY CHECK (name <> ''),
    value      bytea NOT NULL,
    created_at timestamp with time zone NOT NULL
);
