-- 5,000,000 security events over 30 days in the table as migration 004 creates it (and its
-- indexes), 6,400 addresses and 200,000 users, for benches/events_query/run.sh (BENCHMARKS.md,
-- "Events API at 5,000,000 rows"). Run in a database of its own.
\timing on
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
INSERT INTO security_events (id, event_type, severity, user_id, ip_address, user_agent, metadata, created_at)
SELECT gen_random_uuid(),
       (ARRAY['login_success','failed_login_attempt','token_refreshed','token_generated','login_failed','signup_success','logout','rate_limit_exceeded','token_verification_failed','token_reuse_detected'])[1 + (i % 10)],
       (ARRAY['info','warning','info','info','warning','info','info','warning','warning','critical'])[1 + (i % 10)],
       'user-' || (i * 7919 % 200000),
       '10.' || (i * 31 % 256) || '.' || (i * 17 % 256) || '.' || (i * 13 % 200),
       'Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 Chrome/120.0 Safari/537.36',
       jsonb_build_object('owasp','authn_login_success','requestId', md5(i::text), 'route','/api/auth/login','method','POST'),
       now() - (i * interval '30 days' / 5000000)
FROM generate_series(1::bigint, 5000000::bigint) AS i;
VACUUM ANALYZE security_events;
SELECT count(*), count(DISTINCT ip_address) FROM security_events;
