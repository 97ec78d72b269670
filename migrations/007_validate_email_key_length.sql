-- The length check migration 006 added without checking existing rows: validated in a
-- transaction of its own, which scans `users` under SHARE UPDATE EXCLUSIVE (reads and writes go
-- on; only other schema changes and VACUUM wait), not under 006's ACCESS EXCLUSIVE lock.
ALTER TABLE users VALIDATE CONSTRAINT users_email_key_length;
