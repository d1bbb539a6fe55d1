-- Console sessions carry their account's epoch as it was when they began; logging out
-- raises it, which ends every session begun before.
ALTER TABLE users ADD COLUMN session_epoch INTEGER NOT NULL DEFAULT 0;
