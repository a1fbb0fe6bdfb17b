-- keygate: API keys, stored as SHA-256 digests only (a dump of this table holds no key).
-- Timestamps are milliseconds since the Unix epoch.
CREATE TABLE IF NOT EXISTS keygate_api_keys (
    id          UUID    NOT NULL PRIMARY KEY,
    digest      BYTEA   NOT NULL CHECK (octet_length(digest) = 32),
    owner_kind  TEXT    NOT NULL CHECK (owner_kind IN ('user', 'team')),
    owner_id    TEXT    NOT NULL,
    description TEXT    NOT NULL,
    is_public   BOOLEAN NOT NULL,
    last_four   TEXT    NOT NULL,
    created_at  BIGINT  NOT NULL,
    expires_at  BIGINT,
    revoked_at  BIGINT,
    -- Creation order, to list keys created within one millisecond newest first.
    seq         BIGINT  GENERATED ALWAYS AS IDENTITY
);

-- check: one lookup by digest.
CREATE UNIQUE INDEX IF NOT EXISTS keygate_api_keys_digest ON keygate_api_keys (digest);

-- list: an owner's keys, newest first.
CREATE INDEX IF NOT EXISTS keygate_api_keys_owner
    ON keygate_api_keys (owner_kind, owner_id, created_at DESC, seq DESC);

-- Revocation feed: every change of revoked_at or expires_at, and every deletion, sends the key's
-- id (and nothing else) on channel `keygate_revocations`. NOTIFY is transactional: listeners hear
-- it exactly when the writing transaction commits, and never if it rolls back.
CREATE OR REPLACE FUNCTION keygate_notify_revocation() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('keygate_revocations', OLD.id::text);
    RETURN NULL;
END;
$$;

DROP TRIGGER IF EXISTS keygate_api_keys_revoked ON keygate_api_keys;
CREATE TRIGGER keygate_api_keys_revoked
    AFTER UPDATE OF revoked_at, expires_at ON keygate_api_keys
    FOR EACH ROW
    WHEN (OLD.revoked_at IS DISTINCT FROM NEW.revoked_at
          OR OLD.expires_at IS DISTINCT FROM NEW.expires_at)
    EXECUTE FUNCTION keygate_notify_revocation();

DROP TRIGGER IF EXISTS keygate_api_keys_deleted ON keygate_api_keys;
CREATE TRIGGER keygate_api_keys_deleted
    AFTER DELETE ON keygate_api_keys
    FOR EACH ROW
    EXECUTE FUNCTION keygate_notify_revocation();
