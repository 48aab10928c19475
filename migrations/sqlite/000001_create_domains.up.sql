-- Matches ent/schema/domain.go. ent never migrates the database; this file does.
CREATE TABLE domains (
    id         integer PRIMARY KEY AUTOINCREMENT NOT NULL,
    name       text NOT NULL CHECK (name <> '' AND length(name) <= 253),
    key_hash   text NOT NULL CHECK (key_hash <> ''),
    memo       text NOT NULL DEFAULT '',
    created_at datetime NOT NULL,
    updated_at datetime NOT NULL
);

CREATE UNIQUE INDEX domains_name_key ON domains (name);
