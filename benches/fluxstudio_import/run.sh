#!/usr/bin/env bash
# import-fluxstudio timed on a database holding FluxStudio's tables (source.sql beside this file):
# each round runs every binary given, alternately, into an empty flux_auth schema, and prints the
# command's own time (`took`), the wall time with the migrations, and the peak resident memory.
# Usage: bash benches/fluxstudio_import/run.sh <rounds> <flux-auth binary>...
#   (database flux_auth_import_bench, dropped and filled first; USERS and TOKENS_PER_USER set its
#   size, 100000 and 2 by default)
set -euo pipefail
rounds=$1
shift
db=flux_auth_import_bench
here=$(cd "$(dirname "$0")" && pwd)
export PGOPTIONS="-c client_min_messages=warning"
psql=(psql -h 127.0.0.1 -U postgres -v ON_ERROR_STOP=1 -q)
"${psql[@]}" -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
"${psql[@]}" -d "$db" -v users="${USERS:-100000}" -v tokens_per_user="${TOKENS_PER_USER:-2}" \
  -f "$here/source.sql"
export DATABASE_URL=postgres://postgres@127.0.0.1:5432/$db
export TOTP_ENCRYPTION_KEY=AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=
out=$(mktemp -d)
echo "round | binary | took (s) | wall (s) | peak RSS (MB) | load"
for round in $(seq 1 "$rounds"); do
  for bin in "$@"; do
    "${psql[@]}" -d "$db" -c "DROP SCHEMA IF EXISTS flux_auth CASCADE"
    load=$(cut -d' ' -f1 /proc/loadavg)
    /usr/bin/time -v -o "$out/time" "$bin" import-fluxstudio >"$out/stdout" 2>"$out/stderr" \
      || { cat "$out/stderr" >&2; exit 1; }
    took=$(sed -n 's/^took \([0-9.]*\) s$/\1/p' "$out/stdout")
    wall=$(sed -n 's/.*Elapsed (wall clock) time.*: \(.*\)$/\1/p' "$out/time" \
      | awk -F: '{ s = 0; for (i = 1; i <= NF; i++) s = s * 60 + $i; print s }')
    rss=$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$out/time")
    echo "$round | $bin | $took | $wall | $((rss / 1024)) | $load"
  done
done
grep -v '^skipped' "$out/stdout"
