-- For rotation.sql: one live session per user of setup.sh, each with one live refresh token.
-- Run after setup.sh: psql -h 127.0.0.1 -U postgres -d flux_auth_pgbench -f benches/pgbench/rotation_setup.sql
INSERT INTO auth_sessions (id, user_id, device_name, ip_address, user_agent, fingerprint, created_at, last_used_at, expires_at)
  SELECT md5(g::text)::uuid, 'u' || g, 'Chrome on Linux', '127.0.0.1', 'flux-load', md5(g::text) || md5(g::text),
         now(), now(), now() + interval '30 days'
  FROM generate_series(1, 1000) g;
INSERT INTO refresh_tokens (id, session_id, token_hash, created_at)
  SELECT gen_random_uuid(), md5(g::text)::uuid, md5(random()::text) || md5(random()::text), now()
  FROM generate_series(1, 1000) g;
ANALYZE;
