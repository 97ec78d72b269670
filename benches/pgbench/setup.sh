#!/usr/bin/env bash
# A scratch database for the pgbench scripts beside this file: the service's own tables
# (migrations 001, 002 and 005, as the service runs them) and 1,000 users.
# Usage: bash benches/pgbench/setup.sh [database]   (default flux_auth_pgbench; dropped first)
set -euo pipefail
db=${1:-flux_auth_pgbench}
here=$(cd "$(dirname "$0")" && pwd)
psql=(psql -h 127.0.0.1 -U postgres -v ON_ERROR_STOP=1 -q)
"${psql[@]}" -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
for m in 001 002 005; do
  "${psql[@]}" -d "$db" -f "$here"/../../migrations/${m}_*.sql 2>/dev/null
done
"${psql[@]}" -d "$db" -c "INSERT INTO users (id, email, name) \
  SELECT 'u' || g, 'u' || g || '@example.com', 'User ' || g FROM generate_series(1, 1000) g"
echo "ready: $db"
