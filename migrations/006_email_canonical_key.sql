-- One account per mailbox, whatever the spelling of its address: `email` keeps the address as
-- sent (trimmed, lower-cased) for display and mail, and `email_key` holds its canonical key
-- (src/domain/email.rs: the local part NFKC-normalised and lower-cased, the domain through IDNA,
-- a quoted local part unquoted). Accounts are found and kept unique by the key.
--
-- Postgres has no IDNA, so the service fills the key: on every insert, and for existing rows
-- right after the migrations run (src/store/postgres/email_keys.rs), oldest first. When two
-- existing rows share a key, the later keeps NULL (a unique index admits any number of NULLs):
-- the migration never fails on old data; the service logs each such pair at start and
-- `flux-auth users email-collisions` lists them for an operator to resolve.

-- Adding a column and building the index lock `users` briefly: give up rather than queue behind
-- a long transaction (and stall every login behind this lock); the migration is retried.
SET LOCAL lock_timeout = '5s';
ALTER TABLE users ADD COLUMN IF NOT EXISTS email_key TEXT;
-- NOT VALID: checking existing rows would scan `users` under this migration's ACCESS EXCLUSIVE
-- lock, and the new column holds nothing to check. Every row written from now on is checked;
-- migration 007 validates the rest under a lock that lets reads and writes go on.
ALTER TABLE users ADD CONSTRAINT users_email_key_length CHECK (length(email_key) <= 254) NOT VALID;
CREATE UNIQUE INDEX IF NOT EXISTS users_email_canonical_key ON users (email_key);
