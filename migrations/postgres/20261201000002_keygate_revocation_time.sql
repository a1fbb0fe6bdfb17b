-- keygate: the revocation notification also carries when the change was made, for the feeds'
-- lag histogram: `<key id> <milliseconds since the Unix epoch>` (the database's clock at the
-- change, shortly before the commit). Feeds read both this and the bare id the first version
-- of this function sent. The triggers call the function by name: replacing it is enough.
CREATE OR REPLACE FUNCTION keygate_notify_revocation() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(
        'keygate_revocations',
        OLD.id::text || ' ' || (extract(epoch FROM clock_timestamp()) * 1000)::bigint::text
    );
    RETURN NULL;
END;
$$;
