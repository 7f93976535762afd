-- Each certificate's public key (DER SubjectPublicKeyInfo), so that a revocation request signed
-- with the certificate's private key can be checked. Certificates learnt before have none: their
-- holders' proofs are refused (an operator revokes them).
ALTER TABLE certificates ADD COLUMN spki_der bytea;

-- Keys revoked for keyCompromise (bad-key-revoker): every live certificate with one is revoked,
-- including one learnt after the compromise (approved before the key was blocked, issued after).
CREATE TABLE compromised_keys (
    spki_sha256  text        PRIMARY KEY,
    serial       text        NOT NULL,  -- the certificate whose keyCompromise revocation recorded it
    request_id   text        NOT NULL,  -- and the request (or order) that revoked it
    recorded_at  timestamptz NOT NULL
);
