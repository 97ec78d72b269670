-- Every change to a user row is announced on the channel `flux_auth_users` (the payload is the
-- user's id; `*` after a TRUNCATE), whoever makes it: this service on any instance, the CLI, an
-- operator's SQL. Each instance keeps recently read users in memory and drops its copy when the
-- announcement arrives (src/store/postgres/user_cache.rs). Postgres sends a notification when
-- the writing transaction commits, and never for one that rolls back.
CREATE OR REPLACE FUNCTION flux_auth_user_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        PERFORM pg_notify('flux_auth_users', '*');
    ELSE
        PERFORM pg_notify('flux_auth_users', OLD.id);
    END IF;
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS users_changed_notify ON users;
CREATE TRIGGER users_changed_notify
    AFTER UPDATE OR DELETE ON users
    FOR EACH ROW EXECUTE FUNCTION flux_auth_user_changed();

DROP TRIGGER IF EXISTS users_truncated_notify ON users;
CREATE TRIGGER users_truncated_notify
    AFTER TRUNCATE ON users
    FOR EACH STATEMENT EXECUTE FUNCTION flux_auth_user_changed();
