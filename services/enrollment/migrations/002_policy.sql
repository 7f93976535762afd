-- Policy on the log: provisioners can be disabled or removed, profiles are applied by operators,
-- compromised keys are blocked, and requests may wait for an operator's approval.
ALTER TABLE provisioners
    ADD COLUMN status         text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled', 'removed')),
    ADD COLUMN status_reason  text,
    ADD COLUMN status_by      text,
    ADD COLUMN status_at      timestamptz,
    -- the stream sequence of the last event applied to this provisioner: an older event that
    -- arrives late (another replica, a redelivery) never undoes a newer one
    ADD COLUMN last_seq       bigint NOT NULL DEFAULT 0;

-- The current version of each profile (its digest names the exact version a decision used).
CREATE TABLE profiles (
    name           text        PRIMARY KEY,
    digest         text        NOT NULL,
    body           jsonb       NOT NULL,
    applied_at     timestamptz NOT NULL,
    applied_by     text        NOT NULL,
    lint_failed    boolean     NOT NULL DEFAULT false,
    lint_findings  jsonb       NOT NULL DEFAULT '[]',
    applied_seq    bigint      NOT NULL DEFAULT 0
);

CREATE TABLE blocked_keys (
    spki_sha256  text        PRIMARY KEY,
    reason       text        NOT NULL,
    blocked_by   text        NOT NULL,
    blocked_at   timestamptz NOT NULL
);

ALTER TABLE requests DROP CONSTRAINT requests_status_check;
ALTER TABLE requests
    ADD CONSTRAINT requests_status_check CHECK (status IN ('pending', 'approved', 'rejected', 'expired', 'issued')),
    ADD COLUMN csr_pem         text,
    ADD COLUMN ip_addresses    text[]      NOT NULL DEFAULT '{}',
    ADD COLUMN emails          text[]      NOT NULL DEFAULT '{}',
    ADD COLUMN validity_days   integer,
    ADD COLUMN provisioner_id  text,
    ADD COLUMN token_id        text,
    ADD COLUMN profile_digest  text,
    ADD COLUMN expires_at      timestamptz,
    ADD COLUMN decided_by      text,
    ADD COLUMN serial          text,
    ADD COLUMN issuer_id       text,
    ADD COLUMN not_after       timestamptz;

CREATE INDEX requests_pending_by_expiry ON requests (expires_at) WHERE status = 'pending';
CREATE INDEX requests_by_status ON requests (status, requested_at);
