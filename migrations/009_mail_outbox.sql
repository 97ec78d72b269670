-- The outbox: messages delivered at least once by a sender task (src/mail/sender.rs), written in
-- the same transaction as the one-time token a message carries. `kind` says which sender
-- delivers a message (`email`; another kind of outgoing message shares the table and the
-- sender's machinery). `body` is deleted once the message is sent; the row keeps who, what,
-- when, attempts and the last error. A sender claims due rows with FOR UPDATE SKIP LOCKED and a
-- lease (`leased_until`), so instances sharing the database never deliver one message at once.
CREATE TABLE IF NOT EXISTS outbox (
    id              UUID PRIMARY KEY,
    kind            TEXT NOT NULL,
    recipient       TEXT NOT NULL,
    template        TEXT NOT NULL,
    body            TEXT,
    state           TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'sent', 'dead')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    created_at      TIMESTAMPTZ NOT NULL,
    next_attempt_at TIMESTAMPTZ NOT NULL,
    leased_until    TIMESTAMPTZ,
    sent_at         TIMESTAMPTZ,
    last_error      TEXT
);
-- What a sender polls: the due pending messages of its kind.
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (kind, next_attempt_at) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS outbox_sent_at ON outbox (sent_at) WHERE state = 'sent';

-- One-time tokens (email verification, password reset): only their SHA-256 is stored, one per
-- user and purpose (a new request replaces the previous), consumed in the transaction that
-- applies it. Expired ones are deleted by cleanup.
CREATE TABLE IF NOT EXISTS one_time_tokens (
    token_hash  TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    purpose     TEXT NOT NULL CHECK (purpose IN ('verify_email', 'reset_password')),
    created_at  TIMESTAMPTZ NOT NULL,
    expires_at  TIMESTAMPTZ NOT NULL,
    UNIQUE (user_id, purpose)
);
CREATE INDEX IF NOT EXISTS one_time_tokens_expires_at ON one_time_tokens (expires_at);
