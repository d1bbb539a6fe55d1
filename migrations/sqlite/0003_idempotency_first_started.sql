-- When a request first started under an idempotency key: a retry that takes over an
-- abandoned attempt of the same request keeps it, and makes the same new ids from it.
-- 0 for claims made before this column existed.
ALTER TABLE idempotency_keys ADD COLUMN started_at_ms INTEGER NOT NULL DEFAULT 0;
