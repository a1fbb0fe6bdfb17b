-- keygate: the revocation log, read by `SqliteRevocationFeed` (processes sharing the file poll it).
-- Every change of revoked_at or expires_at, and every deletion, appends the key's id (and
-- nothing else) with the time of the change in milliseconds since the Unix epoch. Rows are
-- written in the changing transaction, so a reader sees them exactly when it commits.
CREATE TABLE IF NOT EXISTS keygate_revocation_log (
    seq       INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    key_id    TEXT    NOT NULL,
    at_millis INTEGER NOT NULL
);

-- pruning: rows older than one hour go, oldest first.
CREATE INDEX IF NOT EXISTS keygate_revocation_log_at ON keygate_revocation_log (at_millis);

-- Each trigger also prunes the log of rows more than one hour older than the one it writes: the
-- log holds at most an hour of revocations, and a feed further behind than that finds a gap in
-- `seq` and empties its cache.
DROP TRIGGER IF EXISTS keygate_api_keys_revoked;
CREATE TRIGGER keygate_api_keys_revoked
    AFTER UPDATE OF revoked_at, expires_at ON keygate_api_keys
    FOR EACH ROW
    WHEN OLD.revoked_at IS NOT NEW.revoked_at OR OLD.expires_at IS NOT NEW.expires_at
BEGIN
    INSERT INTO keygate_revocation_log (key_id, at_millis)
        VALUES (OLD.id, CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER));
    DELETE FROM keygate_revocation_log
        WHERE at_millis < CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER) - 3600000;
END;

DROP TRIGGER IF EXISTS keygate_api_keys_deleted;
CREATE TRIGGER keygate_api_keys_deleted
    AFTER DELETE ON keygate_api_keys
    FOR EACH ROW
BEGIN
    INSERT INTO keygate_revocation_log (key_id, at_millis)
        VALUES (OLD.id, CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER));
    DELETE FROM keygate_revocation_log
        WHERE at_millis < CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER) - 3600000;
END;
