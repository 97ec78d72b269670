-- Two-factor sign-in (TOTP): one row per user who has set it up. The secrets are AES-256-GCM
-- ciphertexts under TOTP_ENCRYPTION_KEY (src/auth/two_factor/cipher.rs), never the secrets
-- themselves. `pending_secret` waits for its first code (setup, then verify-setup); `secret` is
-- the active one. `last_step` is the last TOTP time step accepted: a code is accepted only for a
-- later step, checked and moved in one UPDATE, so no code is accepted twice, by any instance.
-- `backup_codes` are SHA-256 hashes, each removed as it is used.
CREATE TABLE IF NOT EXISTS two_factor (
    user_id        TEXT PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    secret         TEXT,
    pending_secret TEXT,
    enabled_at     TIMESTAMPTZ,
    last_step      BIGINT,
    backup_codes   TEXT[] NOT NULL DEFAULT '{}',
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);
