# flux-auth container image.
#
#   docker build -t flux-auth .
#   docker run --rm -p 3001:3001 -e JWT_SECRET="$(docker run --rm flux-auth gen-secret)" flux-auth
#
# The build needs no database: queries are checked at run time and migrations are embedded.

# --- build ----------------------------------------------------------------------------------------
FROM rust:1-bookworm AS builder
WORKDIR /build

# Dependencies first, in their own layer: a build with only the manifests, the lock file and stub
# sources compiles every dependency, and that layer is reused until one of those files changes.
# benches/ comes along because Cargo.toml names a bench target, and cargo refuses a manifest whose
# named targets are missing (benches are not built here). The load harness (tools/flux-load) is a
# member of the workspace, so cargo needs its manifest and a target to load the workspace; a stub
# stands in for its sources, which the image never builds.
COPY Cargo.toml Cargo.lock ./
COPY tools/flux-load/Cargo.toml ./tools/flux-load/
COPY benches ./benches
RUN mkdir src tools/flux-load/src \
    && echo 'fn main() {}' > src/main.rs \
    && echo 'fn main() {}' > tools/flux-load/src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked --bin flux-auth \
    && rm -rf src

# Then the service itself. COPY keeps the files' own timestamps, which can be older than the
# stubs' build, so touch them to make sure cargo rebuilds the crate and not just relinks the stub.
COPY src ./src
COPY migrations ./migrations
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --bin flux-auth \
    && install -m 0755 target/release/flux-auth /usr/local/bin/flux-auth

# --- run ------------------------------------------------------------------------------------------
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# A system user with no shell and no home; the data and spool folders belong to it, mode 0700
# (the service also creates them 0700). A named volume mounted there starts with this ownership.
RUN groupadd --system --gid 10001 flux-auth \
    && useradd --system --uid 10001 --gid flux-auth --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin flux-auth \
    && install -d -m 0700 -o flux-auth -g flux-auth /data /data/security-events

COPY --from=builder /usr/local/bin/flux-auth /usr/local/bin/flux-auth

# Production defaults; JWT_SECRET (or JWT_SECRET_FILE) must be given at run time, or the service
# exits 78 with a message saying how to make one. DATA_DIR holds the JSON-file store (the default
# when DATABASE_URL is unset) and the security-event spool (DATA_DIR/security-events).
ENV NODE_ENV=production \
    HOST=0.0.0.0 \
    PORT=3001 \
    DATA_DIR=/data \
    LOG_FORMAT=json

USER flux-auth:flux-auth
# Where config/default.toml (and .env) would be looked for: none is needed, everything above is
# env; mount a file at /app/config/default.toml or point CONFIG_FILE at one to use a file.
WORKDIR /app
VOLUME ["/data"]
EXPOSE 3001

# The binary checks itself (GET /health/live on 127.0.0.1:$PORT), so the image needs no curl.
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/flux-auth", "healthcheck"]

# SIGTERM: stop accepting, finish in-flight requests (SHUTDOWN_TIMEOUT_MS), flush the security
# log, exit 0 -- well inside Docker's default 10 s stop timeout.
STOPSIGNAL SIGTERM
# With no arguments the binary serves; `docker run IMAGE check-config` (or migrate, gen-secret...)
# runs a command instead.
ENTRYPOINT ["/usr/local/bin/flux-auth"]
