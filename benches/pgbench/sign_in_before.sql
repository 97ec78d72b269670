-- A password login's writes made the simple way, the baseline for sign_in_after.sql:
-- last_login on its own (autocommit), then the session, its first token and the session-cap eviction in a
-- transaction. Six round trips and two commits.
\set uid random(1, 1000)
\set sid random(1, 1000000000000)
UPDATE users SET last_login = now() WHERE id = 'u' || :uid;
BEGIN;
INSERT INTO auth_sessions (id, user_id, device_name, ip_address, user_agent, fingerprint, created_at, last_used_at, expires_at) VALUES (md5(:sid::text)::uuid, 'u' || :uid, 'Chrome on Linux', '127.0.0.1', 'flux-load', md5(random()::text) || md5(random()::text), now(), now(), now() + interval '30 days');
INSERT INTO refresh_tokens (id, session_id, token_hash, created_at, rotated_at, replaced_by) VALUES (gen_random_uuid(), md5(:sid::text)::uuid, md5(random()::text) || md5(random()::text), now(), NULL, NULL);
UPDATE auth_sessions SET revoked_at = now(), revoked_reason = 'session_limit' WHERE id IN (SELECT id FROM auth_sessions WHERE user_id = 'u' || :uid AND revoked_at IS NULL AND expires_at > now() AND last_used_at > now() - interval '7 days' ORDER BY created_at DESC, id DESC OFFSET 10) RETURNING id;
COMMIT;
