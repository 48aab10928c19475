-- Issue 17: what a domain carries. 'http' is the reverse proxy; 'tls-passthrough' carries TLS
-- connections on the HTTPS port, routed by SNI, to the agent untouched; 'tcp' carries the connections
-- of a public TCP port. Matches ent/schema/domain.go. One simple query: one transaction.
ALTER TABLE domains
    ADD COLUMN mode text NOT NULL DEFAULT 'http' CHECK (mode IN ('http', 'tls-passthrough', 'tcp')),
    -- The public port of a 'tcp' domain; unique, so that two gateways on this database can never
    -- hand the same port to two domains.
    ADD COLUMN tcp_port integer UNIQUE CHECK (tcp_port BETWEEN 1 AND 65535),
    -- The PROXY protocol version the agent writes to the target before the visitor's bytes (0 none).
    ADD COLUMN proxy_protocol smallint NOT NULL DEFAULT 0 CHECK (proxy_protocol IN (0, 1, 2)),
    ADD CONSTRAINT domains_tcp_port_only_tcp CHECK ((mode = 'tcp') = (tcp_port IS NOT NULL));
