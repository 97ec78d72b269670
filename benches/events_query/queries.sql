-- The admin event API's page query and 30-day stats, as src/security_log/query.rs sends them
-- (prepared statements, as sqlx runs them).
\timing on
\pset pager off
PREPARE page(text, text, text, text, timestamptz, timestamptz, timestamptz, uuid) AS
SELECT id, event_type, severity, user_id, token_id, ip_address, user_agent, metadata, created_at FROM security_events WHERE ($1::text IS NULL OR event_type = $1) AND ($2::text IS NULL OR severity = $2) AND ($3::text IS NULL OR user_id = $3) AND ($4::text IS NULL OR ip_address = $4) AND ($5::timestamptz IS NULL OR created_at >= $5) AND ($6::timestamptz IS NULL OR created_at < $6) AND ($7::timestamptz IS NULL OR (created_at, id) < ($7, $8)) ORDER BY created_at DESC, id DESC LIMIT 101;
PREPARE stats(timestamptz, timestamptz) AS
SELECT event_type, severity, count(*) FROM security_events WHERE created_at >= $1 AND created_at < $2 GROUP BY 1, 2;
-- The stats once the hourly rollups are complete (src/security_log/rollups.rs, `counts`): the
-- rollups for the whole hours ($3 to $4), the table for the partial hours at either edge.
PREPARE stats_rollups(timestamptz, timestamptz, timestamptz, timestamptz) AS
SELECT event_type, severity, sum(n)::bigint FROM (SELECT event_type, severity, events AS n FROM security_event_rollups WHERE hour >= $3 AND hour < $4 UNION ALL SELECT event_type, severity, count(*) FROM security_events WHERE created_at >= $1 AND created_at < $3 GROUP BY 1, 2 UNION ALL SELECT event_type, severity, count(*) FROM security_events WHERE created_at >= $4 AND created_at < $2 GROUP BY 1, 2) counts GROUP BY 1, 2;
