-- Orders, their authorizations (one per identifier) and each authorization's challenges (RFC 8555
-- §7.1.3-7.1.5). An order's status is derived from its authorizations until it is finalized.
CREATE TABLE orders (
    order_id     text        PRIMARY KEY,
    account_id   text        NOT NULL REFERENCES accounts,
    identifiers  jsonb       NOT NULL,           -- [{"type": "dns", "value": ...}], sorted
    expires_at   timestamptz NOT NULL,
    created_at   timestamptz NOT NULL
);
CREATE INDEX orders_account ON orders (account_id, created_at);

CREATE TABLE authorizations (
    authz_id     text        PRIMARY KEY,
    order_id     text        NOT NULL REFERENCES orders,
    account_id   text        NOT NULL REFERENCES accounts,
    name         text        NOT NULL,           -- the dns identifier's value
    status       text        NOT NULL CHECK (status IN ('pending', 'valid', 'invalid', 'deactivated')),
    expires_at   timestamptz NOT NULL
);
CREATE INDEX authorizations_order ON authorizations (order_id);

CREATE TABLE challenges (
    challenge_id text        PRIMARY KEY,
    authz_id     text        NOT NULL REFERENCES authorizations,
    type         text        NOT NULL,
    token        text        NOT NULL,
    status       text        NOT NULL CHECK (status IN ('pending', 'processing', 'valid', 'invalid')),
    started_at   timestamptz,                    -- when validation began (a replica that died leaves it processing)
    validated_at timestamptz,
    error        jsonb                           -- the problem document of a failed validation
);
CREATE INDEX challenges_authz ON challenges (authz_id);
