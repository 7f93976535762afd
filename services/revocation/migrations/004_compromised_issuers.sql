-- Issuing CAs an operator declared compromised: every certificate they issued is revoked
-- (cACompromise), including one learnt after the declaration.
CREATE TABLE compromised_issuers (
    ca_id        text        PRIMARY KEY,
    declared_by  text        NOT NULL,
    declared_at  timestamptz NOT NULL
);
CREATE INDEX certificates_by_issuer ON certificates (issuer_id) WHERE status = 'good';
