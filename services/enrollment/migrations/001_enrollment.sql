-- Enrollment's own state: provisioners (public keys only), spent tokens, request decisions.
CREATE TABLE provisioners (
    provisioner_id  text        PRIMARY KEY,
    name            text        NOT NULL,
    public_key_pem  text        NOT NULL,
    registered_at   timestamptz NOT NULL,
    registered_by   text        NOT NULL
);

-- A token is spent by inserting its id: the primary key, not a check-then-write, makes it single use.
CREATE TABLE token_uses (
    token_id        text        PRIMARY KEY,
    provisioner_id  text        NOT NULL,
    request_id      text        NOT NULL,
    used_at         timestamptz NOT NULL
);

CREATE TABLE requests (
    request_id   text        PRIMARY KEY,
    requester    text        NOT NULL,
    profile      text        NOT NULL,
    status       text        NOT NULL CHECK (status IN ('approved', 'rejected')),
    reasons      jsonb       NOT NULL DEFAULT '[]',
    dns_names    text[]      NOT NULL DEFAULT '{}',
    requested_at timestamptz NOT NULL,
    decided_at   timestamptz NOT NULL
);
