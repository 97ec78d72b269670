-- External sign-in identities (Google and other OpenID providers), keyed by (issuer, subject) as
-- OpenID Connect requires: never by email, which can change or be reassigned at the provider.
CREATE TABLE IF NOT EXISTS user_identities (
    issuer       TEXT NOT NULL,
    subject      TEXT NOT NULL,
    user_id      TEXT NOT NULL,
    email        TEXT,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_used_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (issuer, subject)
);

CREATE INDEX IF NOT EXISTS user_identities_user ON user_identities (user_id);
