-- Revocation and renewal (RFC 8555 §7.6, RFC 9773): certificates are found by serial, and an order
-- may replace a certificate of its account (ARI's `replaces`, or the same names again).
ALTER TABLE orders ADD COLUMN replaces text;  -- the serial of the certificate it replaces
CREATE INDEX orders_serial ON orders (serial) WHERE serial IS NOT NULL;
CREATE INDEX orders_replaces ON orders (replaces) WHERE replaces IS NOT NULL;
