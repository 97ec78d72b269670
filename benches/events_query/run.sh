#!/usr/bin/env bash
# Times each query of the admin events API at 5,000,000 rows: 7 executions of the prepared
# statement each (as sqlx runs it, the last two on the generic plan if Postgres picks one),
# reporting the median and the slowest of the last five; the stats from the hourly rollups too once
# they exist (the service creates them). Usage: run.sh [database].
set -euo pipefail
DB=${1:-flux_bench_events}
HERE=$(dirname "$0")
run() {
  local label=$1 exec=$2
  local out
  out=$( { cat "$HERE/queries.sql"; for _ in 1 2 3 4 5 6 7; do echo "EXECUTE $exec;"; done; } \
    | psql -h 127.0.0.1 -U postgres -d "$DB" -q 2>&1 | grep '^Time:' | tail -n 5 | awk '{print $2}' | sort -n)
  local median max
  median=$(echo "$out" | sed -n 3p); max=$(echo "$out" | tail -n 1)
  printf '| %s | %s | %s |\n' "$label" "$median" "$max"
}
IP=$(psql -h 127.0.0.1 -U postgres -d "$DB" -tAc "SELECT ip_address FROM security_events WHERE created_at < now() - interval '15 days' LIMIT 1")
USR=$(psql -h 127.0.0.1 -U postgres -d "$DB" -tAc "SELECT user_id FROM security_events WHERE created_at < now() - interval '20 days' LIMIT 1")
echo "| query | median ms | max ms |"
echo "|---|---|---|"
run "no filter (newest page)" "page(NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)"
run "ip=$IP" "page(NULL, NULL, NULL, '$IP', NULL, NULL, NULL, NULL)"
run "ip + last 24 h" "page(NULL, NULL, NULL, '$IP', now() - interval '1 day', NULL, NULL, NULL)"
run "type=token_reuse_detected" "page('token_reuse_detected', NULL, NULL, NULL, NULL, NULL, NULL, NULL)"
run "type=credential_stuffing_suspected (none stored)" "page('credential_stuffing_suspected', NULL, NULL, NULL, NULL, NULL, NULL, NULL)"
run "severity=critical" "page(NULL, 'critical', NULL, NULL, NULL, NULL, NULL, NULL)"
run "userId=$USR" "page(NULL, NULL, '$USR', NULL, NULL, NULL, NULL, NULL)"
run "window 10 to 9 days ago" "page(NULL, NULL, NULL, NULL, now() - interval '10 days', now() - interval '9 days', NULL, NULL)"
run "ip + type (drill-down)" "page('failed_login_attempt', NULL, NULL, '$IP', NULL, NULL, NULL, NULL)"
run "stats over 30 days (table)" "stats(now() - interval '30 days', now())"
if [ "$(psql -h 127.0.0.1 -U postgres -d "$DB" -tAc "SELECT to_regclass('security_event_rollups') IS NOT NULL")" = t ]; then
  # Whole hours in UTC, as the service computes them.
  run "stats over 30 days (rollups + edges)" "stats_rollups(now() - interval '30 days', now(), \
date_trunc('hour', (now() - interval '30 days') AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' + interval '1 hour', \
date_trunc('hour', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC')"
fi
