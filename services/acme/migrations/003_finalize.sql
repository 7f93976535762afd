-- Finalizing an order (RFC 8555 §7.4): the enrollment request it became, kept before it is published
-- (so that it can be published again, unchanged, after a crash), and its outcome.
ALTER TABLE orders
    ADD COLUMN finalize_status text CHECK (finalize_status IN ('processing', 'valid', 'invalid')),
    ADD COLUMN request_id      text UNIQUE,
    ADD COLUMN request         jsonb,          -- the EnrollmentRequested event, as published
    ADD COLUMN finalized_at    timestamptz,
    ADD COLUMN serial          text,
    ADD COLUMN cert_chain      text,           -- the certificate and its chain, PEM
    ADD COLUMN error           jsonb;
CREATE INDEX orders_processing ON orders (finalized_at) WHERE finalize_status = 'processing';
