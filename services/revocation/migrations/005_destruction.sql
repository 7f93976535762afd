-- Destruction: a certificate retired for good (revoked first if it was not). Its fingerprint goes on
-- the CertificateDestroyed event; its public key's DER is dropped then (only the hash is kept, for
-- keyCompromise blocking). Certificates learnt before this column existed have no fingerprint.
ALTER TABLE certificates ADD COLUMN fingerprint_sha256 text;
ALTER TABLE certificates ADD COLUMN destroyed_at timestamptz;
