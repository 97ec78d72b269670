-- What FluxStudio's settings and profile pages keep per account: the settings the user saved (the
-- categories `notifications`, `appearance`, `performance`, each a JSON object; NULL until first
-- saved, the service merges its defaults in), and whether sign-in asks for a second factor. The
-- service caps the settings at 4 KiB of compact JSON; the CHECK bounds every other writer too, at
-- twice that, since Postgres's text form of JSONB spaces out what the service measured compact.

-- Adding columns locks `users` against writes: give up rather than queue behind a long
-- transaction (and stall every login behind this lock); the migration is retried.
SET LOCAL lock_timeout = '5s';
ALTER TABLE users
    ADD COLUMN IF NOT EXISTS settings JSONB
        CHECK (settings IS NULL OR (jsonb_typeof(settings) = 'object'
                                    AND octet_length(settings::text) <= 8192)),
    ADD COLUMN IF NOT EXISTS two_factor_enabled BOOLEAN NOT NULL DEFAULT FALSE;
