-- The public key of each certificate (SPKI SHA-256), so that a keyCompromise revocation can block
-- the key for every future enrollment. Certificates learnt before this column existed have none.
ALTER TABLE certificates ADD COLUMN spki_sha256 text;
CREATE INDEX certificates_by_key ON certificates (spki_sha256);
