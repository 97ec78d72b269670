-- FluxStudio's `users` and `refresh_tokens` in `public` (the shape of
-- tests/api/cutover/fluxstudio.rs, current variant), filled by generate_series: :users users, each
-- with preferences and one bcrypt hash (the import copies hashes, it never checks them), two-factor
-- on for every 100th (FluxStudio's 80-bit base32 secret, eight plain backup codes), and
-- :tokens_per_user live 128-hex refresh tokens per user.
-- psql -v users=100000 -v tokens_per_user=2 -f source.sql
CREATE TABLE users (
    id TEXT PRIMARY KEY,
    email TEXT UNIQUE NOT NULL,
    name TEXT NOT NULL,
    password_hash TEXT,
    user_type TEXT DEFAULT 'client',
    avatar_url TEXT,
    phone TEXT,
    timezone TEXT,
    preferences JSONB DEFAULT '{}'::jsonb,
    oauth_provider TEXT,
    oauth_id TEXT,
    google_id TEXT,
    apple_id TEXT,
    email_verified BOOLEAN DEFAULT false,
    is_active BOOLEAN DEFAULT true,
    last_login TIMESTAMPTZ,
    created_at TIMESTAMPTZ DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMPTZ DEFAULT CURRENT_TIMESTAMP,
    verification_token TEXT,
    verification_expires TIMESTAMPTZ,
    password_reset_token TEXT,
    password_reset_expires TIMESTAMPTZ,
    totp_secret TEXT,
    totp_enabled BOOLEAN DEFAULT false,
    totp_backup_codes TEXT[],
    totp_enabled_at TIMESTAMPTZ,
    stripe_customer_id TEXT,
    plan_id TEXT,
    trial_ends_at TIMESTAMPTZ,
    email_preferences JSONB
);
CREATE TABLE refresh_tokens (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    token TEXT UNIQUE NOT NULL,
    device_name TEXT,
    device_fingerprint JSONB,
    ip_address INET,
    user_agent TEXT,
    expires_at TIMESTAMPTZ NOT NULL,
    created_at TIMESTAMPTZ DEFAULT CURRENT_TIMESTAMP,
    last_used_at TIMESTAMPTZ DEFAULT CURRENT_TIMESTAMP,
    revoked_at TIMESTAMPTZ,
    is_active BOOLEAN DEFAULT true
);
CREATE INDEX idx_refresh_tokens_user ON refresh_tokens (user_id);

INSERT INTO users (id, email, name, password_hash, user_type, avatar_url, preferences,
                   oauth_provider, oauth_id, google_id, email_verified, created_at, last_login,
                   totp_secret, totp_enabled, totp_backup_codes, totp_enabled_at)
SELECT 'cm' || lpad(i::text, 12, '0'),
       'User' || i || '@Example.com',
       'User &amp; ' || i,
       '$2a$10$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy',
       CASE WHEN i % 10 = 0 THEN 'designer' ELSE 'client' END,
       'https://cdn.example.com/' || i || '.png',
       '{"appearance": {"theme": "dark"}, "notifications": {"push": false, "frequency": "daily"}}',
       CASE WHEN i % 20 = 0 THEN 'google' END,
       CASE WHEN i % 20 = 0 THEN 'g' || i END,
       CASE WHEN i % 20 = 0 THEN 'g' || i END,
       i % 2 = 0,
       now() - interval '400 days' + i * interval '1 minute',
       now() - interval '1 day',
       CASE WHEN i % 100 = 0 THEN 'JBSWY3DPEHPK3PXP' END,
       i % 100 = 0,
       CASE WHEN i % 100 = 0 THEN ARRAY(SELECT substr(md5(i || ':' || c), 1, 8)
                                        FROM generate_series(1, 8) c) END,
       CASE WHEN i % 100 = 0 THEN now() - interval '30 days' END
FROM generate_series(1, :users) i;

INSERT INTO refresh_tokens (user_id, token, device_name, device_fingerprint, ip_address,
                            user_agent, expires_at, created_at, last_used_at)
SELECT 'cm' || lpad(u::text, 12, '0'),
       encode(sha512(convert_to(u || ':' || t, 'UTF8')), 'hex'),
       'Chrome on macOS',
       to_jsonb(encode(sha256(convert_to(u || ':' || t, 'UTF8')), 'hex')),
       '203.0.113.7',
       'Mozilla/5.0 (Macintosh; Intel Mac OS X 14_0) AppleWebKit/537.36 Chrome/120.0 Safari/537.36',
       now() + interval '6 days',
       now() - interval '1 day',
       now() - interval '1 hour'
FROM generate_series(1, :users) u, generate_series(1, :tokens_per_user) t;
ANALYZE users;
ANALYZE refresh_tokens;
