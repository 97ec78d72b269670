-- Sessions are refresh-token families: one per login, rotated on every refresh, revoked as a
-- whole on logout or when a rotated token comes back (reuse detection).
CREATE TABLE IF NOT EXISTS auth_sessions (
    id             UUID PRIMARY KEY,
    user_id        TEXT NOT NULL,
    device_name    TEXT NOT NULL,
    ip_address     VARCHAR(45) NOT NULL,
    user_agent     TEXT,
    -- Hex SHA-256 over user agent, accept-language and the client's /24 or /64.
    fingerprint    CHAR(64) NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL,
    last_used_at   TIMESTAMPTZ NOT NULL,
    -- The absolute end; the idle limit is counted from last_used_at by the service.
    expires_at     TIMESTAMPTZ NOT NULL,
    revoked_at     TIMESTAMPTZ,
    revoked_reason TEXT
);

-- Users may live in JSON files while sessions live here, so there is no foreign key to users.
CREATE INDEX IF NOT EXISTS auth_sessions_user_live ON auth_sessions (user_id, created_at) WHERE revoked_at IS NULL;
CREATE INDEX IF NOT EXISTS auth_sessions_expires ON auth_sessions (expires_at);

-- Only the SHA-256 of a refresh token is stored: a database leak yields no usable token.
CREATE TABLE IF NOT EXISTS refresh_tokens (
    id          UUID PRIMARY KEY,
    session_id  UUID NOT NULL REFERENCES auth_sessions (id) ON DELETE CASCADE,
    token_hash  CHAR(64) NOT NULL UNIQUE,
    created_at  TIMESTAMPTZ NOT NULL,
    -- Set on rotation: the token is dead from then on, apart from the short grace window.
    rotated_at  TIMESTAMPTZ,
    replaced_by UUID
);

CREATE INDEX IF NOT EXISTS refresh_tokens_session ON refresh_tokens (session_id);
