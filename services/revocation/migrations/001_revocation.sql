-- Revocation's own state: which certificates exist (from issued events) and their status.
CREATE TABLE certificates (
    serial      text        PRIMARY KEY,
    cert_id     text        NOT NULL,
    issuer_id   text        NOT NULL,
    not_after   timestamptz NOT NULL,
    status      text        NOT NULL DEFAULT 'good' CHECK (status IN ('good', 'revoked')),
    revoked_at  timestamptz,
    reason      text
);

CREATE TABLE requests (
    request_id    text        PRIMARY KEY,
    serial        text        NOT NULL,
    reason        text        NOT NULL,
    requested_by  text        NOT NULL,
    outcome       text        NOT NULL,
    decided_at    timestamptz NOT NULL
);
