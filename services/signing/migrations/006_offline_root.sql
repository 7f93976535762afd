-- An offline root (made by the ceremony, `RootCaCreated`): signing knows its certificate, never its
-- key; its CRLs come from the ceremony (`RootCrlSigned`), signing signs none of them.
ALTER TABLE cas ADD COLUMN key_offline boolean NOT NULL DEFAULT false;

-- An issuing CA key generated under an offline root, waiting for the ceremony to certify it
-- (`IssuingCaKeyGenerated` carried its CSR); certified_at once its `IssuingCaCertified` is adopted.
CREATE TABLE issuing_requests (
    ca_id           text        PRIMARY KEY,
    parent_id       text        NOT NULL REFERENCES cas (ca_id),
    csr_pem         text        NOT NULL,
    spki_sha256     text        NOT NULL,
    correlation_id  text        NOT NULL,
    requested_at    timestamptz NOT NULL,
    certified_at    timestamptz
);
-- At most one request waits at a time.
CREATE UNIQUE INDEX issuing_requests_waiting ON issuing_requests ((true)) WHERE certified_at IS NULL;
