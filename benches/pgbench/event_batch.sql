-- One batch of the security log's writer (SECURITY_LOG_BATCH_SIZE, default 500) as
-- src/security_log/postgres_sink.rs sends it: one INSERT ... ON CONFLICT (id) DO NOTHING of 500
-- events of ten types, now. With the rollup triggers (src/security_log/rollups.rs) enabled or
-- disabled: BENCHMARKS.md, "Events API at 5,000,000 rows".
INSERT INTO security_events (id, event_type, severity, user_id, ip_address, user_agent, metadata, created_at)
SELECT gen_random_uuid(),
       (ARRAY['login_success','failed_login_attempt','token_refreshed','token_generated','login_failed','signup_success','logout','rate_limit_exceeded','token_verification_failed','token_reuse_detected'])[1 + (i % 10)],
       (ARRAY['info','warning','info','info','warning','info','info','warning','warning','critical'])[1 + (i % 10)],
       'user-' || (i * 7919 % 200000), '10.0.' || (i % 256) || '.' || (i % 200),
       'Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 Chrome/120.0 Safari/537.36',
       jsonb_build_object('owasp','authn_login_success','route','/api/auth/login','method','POST'),
       now()
FROM generate_series(1, 500) AS i
ON CONFLICT (id) DO NOTHING;
