-- The indexes src/security_log/indexes.rs creates once the log's database is ready.
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_security_events_ip_created ON security_events (ip_address, created_at DESC, id DESC);
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_security_events_type_created ON security_events (event_type, created_at DESC, id DESC);
VACUUM ANALYZE security_events;
