-- Security events, exactly as the old service's migration 004 created them, so a database that
-- already has this table (the old production setup) keeps it and its rows. The service supplies
-- time-ordered ids itself, which makes every write idempotent (ON CONFLICT (id) DO NOTHING), and
-- created_at is when the event happened, not when it was written.
CREATE TABLE IF NOT EXISTS security_events (
    id          UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    event_type  VARCHAR(50) NOT NULL,
    severity    VARCHAR(20) NOT NULL,
    user_id     VARCHAR(255),
    token_id    UUID,
    ip_address  VARCHAR(45),
    user_agent  TEXT,
    metadata    JSONB,
    created_at  TIMESTAMPTZ DEFAULT CURRENT_TIMESTAMP
);

CREATE INDEX IF NOT EXISTS idx_security_events_user ON security_events (user_id);
CREATE INDEX IF NOT EXISTS idx_security_events_type ON security_events (event_type);
CREATE INDEX IF NOT EXISTS idx_security_events_severity ON security_events (severity);
CREATE INDEX IF NOT EXISTS idx_security_events_created ON security_events (created_at DESC);
CREATE INDEX IF NOT EXISTS idx_security_events_token ON security_events (token_id);
CREATE INDEX IF NOT EXISTS idx_security_events_user_created ON security_events (user_id, created_at DESC);
CREATE INDEX IF NOT EXISTS idx_security_events_severity_created ON security_events (severity, created_at DESC);
