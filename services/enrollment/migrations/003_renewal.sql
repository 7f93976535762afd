-- Renewal: a projection of every certificate issued (what a renewal is judged by) and its schedule
-- (when its renewal falls due, when it expires, and whether those events are on the log yet).
CREATE TABLE certificates (
    cert_id            text        PRIMARY KEY,  -- the enrollment request id that created it
    serial             text        NOT NULL,
    issuer_id          text        NOT NULL,
    profile            text        NOT NULL,
    not_before         timestamptz NOT NULL,
    not_after          timestamptz NOT NULL,
    spki_sha256        text        NOT NULL,
    fingerprint_sha256 text        NOT NULL,
    -- the certificate body (public key and names): purged when the certificate is destroyed
    spki_der           bytea,
    dns_names          text[]      NOT NULL DEFAULT '{}',
    ip_addresses       text[]      NOT NULL DEFAULT '{}',
    emails             text[]      NOT NULL DEFAULT '{}',
    provisioner_id     text,
    state              text        NOT NULL DEFAULT 'live'
                       CHECK (state IN ('live', 'superseded', 'revoked', 'destroyed', 'expired')),
    destroyed          boolean     NOT NULL DEFAULT false,
    revoked_reason     text,
    revoked_by         text,       -- CertificateRevoked.authorised_by
    superseded_by      text,       -- the successor's serial
    superseded_by_id   text,       -- the successor's certificate id
    renew_at           timestamptz,  -- NULL: the profile does not renew automatically
    -- whether enrollment's own events about it are on the log: set by the schedule as it sends
    -- them, and again when they are read back, so a replay of the log never sends one twice
    renewal_due_sent   boolean     NOT NULL DEFAULT false,
    expired_sent       boolean     NOT NULL DEFAULT false,
    superseded_sent    boolean     NOT NULL DEFAULT false,
    issued_seq         bigint      NOT NULL
);

CREATE INDEX certificates_by_serial ON certificates (serial);
-- What the schedule scans: certificates with an event still to send, by when it falls due.
CREATE INDEX certificates_renewal_due ON certificates (renew_at)
    WHERE NOT renewal_due_sent AND state = 'live' AND renew_at IS NOT NULL;
CREATE INDEX certificates_expiry_due ON certificates (not_after) WHERE NOT expired_sent AND NOT destroyed;
CREATE INDEX certificates_superseded_unsent ON certificates (cert_id)
    WHERE superseded_by IS NOT NULL AND NOT superseded_sent;

-- Every public key ever certified: a renewal must bring a key never certified before.
CREATE TABLE certified_keys (
    spki_sha256  text  PRIMARY KEY,
    cert_id      text  NOT NULL,
    serial       text  NOT NULL
);

-- A renewal request names the certificate it renews (NULL for enrollments with a token).
ALTER TABLE requests ADD COLUMN renews_serial text;
CREATE INDEX requests_by_renewed_serial ON requests (renews_serial) WHERE renews_serial IS NOT NULL;
