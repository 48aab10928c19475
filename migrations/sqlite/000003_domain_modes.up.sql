-- Issue 17: what a domain carries. 'http' is the reverse proxy; 'tls-passthrough' carries TLS
-- connections on the HTTPS port, routed by SNI, to the agent untouched; 'tcp' carries the connections
-- of a public TCP port. Matches ent/schema/domain.go. golang-migrate runs this file in one transaction.
-- SQLite's ALTER TABLE cannot add a table constraint, so the pairing of mode and port is one column
-- check each, and the port's uniqueness is an index.
ALTER TABLE domains ADD COLUMN mode text NOT NULL DEFAULT 'http' CHECK (mode IN ('http', 'tls-passthrough', 'tcp'));
-- The public port of a 'tcp' domain, NULL otherwise.
ALTER TABLE domains ADD COLUMN tcp_port integer CHECK (tcp_port BETWEEN 1 AND 65535);
CREATE UNIQUE INDEX domains_tcp_port_key ON domains (tcp_port);
-- The PROXY protocol version the agent writes to the target before the visitor's bytes (0 none).
ALTER TABLE domains ADD COLUMN proxy_protocol integer NOT NULL DEFAULT 0 CHECK (proxy_protocol IN (0, 1, 2));
