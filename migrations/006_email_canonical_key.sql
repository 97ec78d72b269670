-- One account per mailbox, whatever the spelling of its address: `email` keeps the address as
-- sent (trimmed, lower-cased) for display and mail, and `email_key` holds its canonical key
-- (src/domain/email.rs: the local part NFKC-normalised and lower-cased, the domain through IDNA,
-- a quoted local part unquoted). Accounts are found and kept unique by the key.
--
-- Postgres has no IDNA, so the service fills the key: on every insert, and for existing rows
-- right after the migrations run (src/store/postgres/email_keys.rs), oldest first. When two
-- existing rows share a key, the later keeps NULL (a unique index admits any number of NULLs),
-- and so does a row whose address has no key under today's rules: the migration never fails on
-- old data; the service logs each such row at start and `flux-auth users email-collisions` lists
-- them for an operator to resolve.
--
-- The key's length is bounded where it is made (at most 254 bytes, or no key), not by a CHECK:
-- one would repeat that bound, and cost a scan of `users` under this migration's exclusive lock
-- (NOT VALID then VALIDATE would not help here: the ADD COLUMN has taken that lock for the whole
-- transaction already).

-- Adding a column and building the index lock `users` briefly: give up rather than queue behind
-- a long transaction (and stall every login behind this lock); the migration is retried.
SET LOCAL lock_timeout = '5s';
ALTER TABLE users ADD COLUMN IF NOT EXISTS email_key TEXT;
CREATE UNIQUE INDEX IF NOT EXISTS users_email_canonical_key ON users (email_key);
