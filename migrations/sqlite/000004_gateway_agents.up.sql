-- Issue 18: each gateway's presence (see the Postgres migration). Matches
-- ent/schema/gatewayagent.go. The embedded store serves one gateway, which counts its own agents
-- in memory; the table exists so that both dialects have the same schema.
CREATE TABLE IF NOT EXISTS gateway_agents (
    id           integer PRIMARY KEY AUTOINCREMENT NOT NULL,
    gateway_id   text NOT NULL CHECK (gateway_id <> '' AND length(gateway_id) <= 64),
    domain       text NOT NULL DEFAULT '' CHECK (length(domain) <= 253),
    agents       integer NOT NULL DEFAULT 0 CHECK (agents >= 0),
    heartbeat_at datetime NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS gatewayagent_gateway_id_domain ON gateway_agents (gateway_id, domain);
CREATE INDEX IF NOT EXISTS gatewayagent_heartbeat_at ON gateway_agents (heartbeat_at);
