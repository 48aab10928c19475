ALTER TABLE domains
    DROP CONSTRAINT domains_tcp_port_only_tcp,
    DROP COLUMN proxy_protocol,
    DROP COLUMN tcp_port,
    DROP COLUMN mode;
