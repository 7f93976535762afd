-- Validation's read model, rebuilt from the log: certificates' status, CAs, latest CRLs.
CREATE TABLE certificates (
    serial        text        PRIMARY KEY,
    cert_id       text        NOT NULL,
    issuer_id     text,
    status        text        NOT NULL CHECK (status IN ('good', 'revoked')),
    not_before    timestamptz,
    not_after     timestamptz,
    dns_names     text[]      NOT NULL DEFAULT '{}',
    fingerprint   text,
    revoked_at    timestamptz,
    reason        text,
    cert_der      bytea
);

CREATE TABLE cas (
    ca_id      text        PRIMARY KEY,
    role       text        NOT NULL,
    parent_id  text,
    cert_der   bytea       NOT NULL,
    not_after  timestamptz NOT NULL
);

CREATE TABLE crls (
    ca_id        text        PRIMARY KEY,
    crl_number   bigint      NOT NULL,
    this_update  timestamptz NOT NULL,
    next_update  timestamptz NOT NULL,
    der          bytea       NOT NULL
);
