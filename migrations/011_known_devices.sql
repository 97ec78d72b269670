-- The devices each user has signed in from, as SHA-256 hashes of their fingerprints: a sign-in
-- from one that is not here is a `new_device_login`. Bounded per user by the service (the least
-- recently seen are dropped past `ANOMALY_KNOWN_DEVICES_PER_USER`).
CREATE TABLE IF NOT EXISTS known_devices (
    user_id          TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    fingerprint_hash TEXT NOT NULL,
    first_seen       TIMESTAMPTZ NOT NULL,
    last_seen        TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (user_id, fingerprint_hash)
);
