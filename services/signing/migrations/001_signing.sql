-- Signing's own state: its CAs, what it intends to sign and what it signed, revocations for CRLs.
CREATE TABLE cas (
    ca_id       text        PRIMARY KEY,
    role        text        NOT NULL CHECK (role IN ('root', 'issuing')),
    parent_id   text        REFERENCES cas (ca_id),
    cert_der    bytea       NOT NULL,
    status      text        NOT NULL DEFAULT 'active',
    created_at  timestamptz NOT NULL
);

-- The intent is committed before signing: one request id, one serial, whatever is redelivered.
CREATE TABLE issuances (
    request_id         text        PRIMARY KEY,
    issuer_id          text        NOT NULL REFERENCES cas (ca_id),
    serial             numeric     NOT NULL,
    not_before         timestamptz NOT NULL,
    not_after          timestamptz NOT NULL,
    spki_sha256        text        NOT NULL,
    issued_event_id    uuid        NOT NULL UNIQUE,
    approval_event_id  uuid        NOT NULL,
    intended_at        timestamptz NOT NULL,
    cert_der           bytea,
    tbs_sha256         text,
    signed_at          timestamptz,
    UNIQUE (issuer_id, serial)
);

CREATE TABLE revoked (
    id          bigserial   PRIMARY KEY,
    issuer_id   text        NOT NULL,
    serial      numeric     NOT NULL,
    revoked_at  timestamptz NOT NULL,
    reason      text        NOT NULL,
    UNIQUE (issuer_id, serial)
);

-- Per issuer: the last CRL signed and how far into `revoked` it reached.
CREATE TABLE crl_state (
    ca_id          text        PRIMARY KEY REFERENCES cas (ca_id),
    crl_number     bigint      NOT NULL DEFAULT 0,
    built_through  bigint      NOT NULL DEFAULT 0,
    this_update    timestamptz,
    next_update    timestamptz
);
