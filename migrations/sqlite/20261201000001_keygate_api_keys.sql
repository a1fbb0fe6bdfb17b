-- keygate: API keys, stored as SHA-256 digests only (a dump of this table holds no key).
-- Timestamps are milliseconds since the Unix epoch; ids are hyphenated UUIDs.
CREATE TABLE IF NOT EXISTS keygate_api_keys (
    id          TEXT    NOT NULL PRIMARY KEY,
    digest      BLOB    NOT NULL CHECK (length(digest) = 32),
    owner_kind  TEXT    NOT NULL CHECK (owner_kind IN ('user', 'team')),
    owner_id    TEXT    NOT NULL,
    description TEXT    NOT NULL,
    is_public   INTEGER NOT NULL CHECK (is_public IN (0, 1)),
    last_four   TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER,
    revoked_at  INTEGER
);

-- check: one lookup by digest.
CREATE UNIQUE INDEX IF NOT EXISTS keygate_api_keys_digest ON keygate_api_keys (digest);

-- list: an owner's keys, newest first (rowid breaks ties within one millisecond).
CREATE INDEX IF NOT EXISTS keygate_api_keys_owner
    ON keygate_api_keys (owner_kind, owner_id, created_at DESC);
