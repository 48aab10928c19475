DROP INDEX domains_tcp_port_key;
ALTER TABLE domains DROP COLUMN proxy_protocol;
ALTER TABLE domains DROP COLUMN tcp_port;
ALTER TABLE domains DROP COLUMN mode;
