-- When a revoked certificate's key became (or may have become) invalid: the CRL entry's
-- invalidityDate extension (RFC 5280 5.3.2), when the revocation gave one.
ALTER TABLE revoked ADD COLUMN invalidity_date timestamptz;
