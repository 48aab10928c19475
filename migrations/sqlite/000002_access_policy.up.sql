-- Issue 15: a domain's access policy, and the gateway-wide secrets (the SSO session key).
-- Matches ent/schema/domain.go and ent/schema/gatewaysecret.go. golang-migrate runs this file in one
-- transaction.

-- The policy as JSON (policy.Spec, passwords already hashed); '' is no policy. Kept in the row so
-- that unregistering a domain removes its policy with it.
ALTER TABLE domains ADD COLUMN policy text NOT NULL DEFAULT '';

-- Secrets of the gateway as a whole, by name.
CREATE TABLE gateway_secrets (
    name       text PRIMARY KEY NOT NULL CHECK (name <> '' AND length(name) <= 64),
    value      blob NOT NULL,
    created_at datetime NOT NULL
);
