-- The rest of a certificate's life: replaced by a renewal (it stays good), expired, or destroyed
-- (revoked, and its body purged: `cert_der` is set to NULL and never written again).
ALTER TABLE certificates ADD COLUMN superseded_by text;
ALTER TABLE certificates ADD COLUMN superseded_by_id text;
ALTER TABLE certificates ADD COLUMN expired_at timestamptz;
ALTER TABLE certificates ADD COLUMN destroyed_at timestamptz;
