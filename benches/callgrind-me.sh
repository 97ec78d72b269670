#!/usr/bin/env bash
# Instructions the server executes per `/me`, counted by callgrind: deterministic, so two binaries
# can be compared on a noisy shared machine where requests/s cannot tell a few percent apart.
#
#   benches/callgrind-me.sh [BINARY] [REQUESTS]     (default target/release/flux-auth, 20000)
#
# Runs the binary under callgrind twice on the file store (no Redis, rate limits off, JSON logs to
# /dev/null): once with REQUESTS keep-alive `/me` calls from `ab -k -c 4` after one signup, once
# with the signup only. Prints the instructions per request: the difference divided by REQUESTS,
# which leaves out start-up, the signup and shutdown. Needs valgrind, ab (apache2-utils), curl.
set -euo pipefail

binary="${1:-target/release/flux-auth}"
requests="${2:-20000}"
for tool in valgrind ab curl; do
    command -v "$tool" >/dev/null || { echo "callgrind-me: $tool is not installed" >&2; exit 1; }
done
[ -x "$binary" ] || { echo "callgrind-me: $binary is not an executable (cargo build --release)" >&2; exit 1; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# One callgrind run with $1 /me requests; prints its total instruction count.
measure() {
    local n=$1 port
    port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
    rm -rf "$work/data"
    env -i PATH="$PATH" CONFIG_FILE=/dev/null NODE_ENV=production LOG_FORMAT=json HOST=127.0.0.1 \
        PORT="$port" JWT_SECRET="callgrind-bench-secret-0123456789abcdef0123456789abcdef" \
        DATA_DIR="$work/data" STORAGE=file RATE_LIMITS=off \
        valgrind --tool=callgrind --callgrind-out-file="$work/out.$n" "$binary" serve \
        >/dev/null 2>"$work/valgrind.$n" &
    local pid=$!
    for _ in $(seq 600); do
        curl -fs "http://127.0.0.1:$port/health/ready" >/dev/null && break
        sleep 0.1
    done
    local token
    token="$(curl -fs -H 'Content-Type: application/json' \
        -d "{\"email\":\"bench-$n@example.com\",\"password\":\"callgrind measures every request\",\"name\":\"Bench\"}" \
        "http://127.0.0.1:$port/api/auth/signup" | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')"
    if [ "$n" -gt 0 ]; then
        ab -q -k -c 4 -n "$n" -H "Authorization: Bearer $token" "http://127.0.0.1:$port/api/auth/me" \
            | grep -E '^(Complete|Failed|Non-2xx)' >&2
    fi
    kill -TERM "$pid"
    wait "$pid" || true
    awk '/^(summary|totals):/ {print $2; exit}' "$work/out.$n"
}

with="$(measure "$requests")"
without="$(measure 0)"
echo "instructions: $with with $requests /me, $without without"
echo "per /me: $(( (with - without) / requests ))"
