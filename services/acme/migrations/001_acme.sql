-- ACME's own state (schema `acme`). Nonces are shared by every replica: one is issued by any and
-- used once at any (RFC 8555 §6.5); an account is its key's thumbprint (RFC 7638), one account per key.
CREATE TABLE nonces (
    nonce       text        PRIMARY KEY,
    expires_at  timestamptz NOT NULL
);
CREATE INDEX nonces_expires_at ON nonces (expires_at);

CREATE TABLE accounts (
    account_id   text        PRIMARY KEY,
    thumbprint   text        NOT NULL UNIQUE,
    jwk          jsonb       NOT NULL,
    status       text        NOT NULL CHECK (status IN ('valid', 'deactivated', 'revoked')),
    contact      text[]      NOT NULL DEFAULT '{}',
    tos_agreed   boolean     NOT NULL DEFAULT false,
    created_at   timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL
);
