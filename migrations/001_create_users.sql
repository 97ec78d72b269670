-- Users. `id` is text because users imported from the old users.json keep their ids, some of
-- which are timestamp strings such as '1760390026607'; new users get UUIDs.
CREATE TABLE IF NOT EXISTS users (
    id             TEXT PRIMARY KEY,
    -- Stored lower-cased and trimmed by the service; the CHECK keeps every writer honest, so the
    -- unique index below really means "one account per address".
    email          TEXT NOT NULL CHECK (email = lower(email) AND length(email) <= 254),
    name           TEXT NOT NULL,
    user_type      TEXT NOT NULL DEFAULT 'client' CHECK (user_type IN ('client', 'designer', 'admin')),
    -- PHC string (argon2id) or a legacy bcrypt hash; NULL for accounts that only use Google.
    password_hash  TEXT,
    google_id      TEXT,
    email_verified BOOLEAN NOT NULL DEFAULT FALSE,
    avatar         TEXT,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_login     TIMESTAMPTZ
);

CREATE UNIQUE INDEX IF NOT EXISTS users_email_key ON users (email);
CREATE UNIQUE INDEX IF NOT EXISTS users_google_id_key ON users (google_id) WHERE google_id IS NOT NULL;
