-- Issue 19: every admin action (API, CLI, console) as a hash chain. Each row's hash covers its own
-- fields and the previous row's hash, so an edited or deleted row breaks the chain at that row
-- (registry.Store.VerifyAudit). Ids are given by the writer (the last id + 1, under a lock), not by
-- a sequence: a gap is a deleted row, never a rolled-back insert.
-- "at" is text (RFC 3339, UTC, nanoseconds) so that the hashed form reads back byte for byte.
CREATE TABLE IF NOT EXISTS audit_log (
    id bigint PRIMARY KEY,
    at text NOT NULL,
    actor text NOT NULL,
    remote text NOT NULL,
    action text NOT NULL,
    target text NOT NULL,
    result text NOT NULL,
    prev_hash text NOT NULL,
    hash text NOT NULL
);
