-- Every change to a user row is announced on the channel `flux_auth_users` (the payload is the
-- user's id; `*`, every user, after a TRUNCATE or for an id too long for a notification's 8000
-- bytes), whoever makes it: this service on any instance, the CLI, an operator's SQL. Each
-- instance keeps recently read users in memory and drops its copy when the announcement arrives
-- (src/store/postgres/user_cache.rs). Postgres sends a notification when the writing transaction
-- commits, and never for one that rolls back.

-- Creating a trigger locks `users` against writes: give up rather than queue behind a long
-- transaction (and stall every login behind this lock); the migration is retried.
SET LOCAL lock_timeout = '5s';
CREATE OR REPLACE FUNCTION flux_auth_user_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        PERFORM pg_notify('flux_auth_users', '*');
    ELSE
        PERFORM pg_notify('flux_auth_users',
            CASE WHEN octet_length(OLD.id) < 7900 THEN OLD.id ELSE '*' END);
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
