-- External account binding (RFC 8555 §7.3.4): credentials an operator hands out (`certbus acme eab
-- create --provisioner P`), each of which binds one ACME account, once, to Certbus provisioner P.
-- The HMAC key is kept here, in ACME's schema, as step-ca keeps its EAB keys in its database: ACME
-- must read it to verify a binding, so whoever can read this table can bind an account with an
-- unused, unrevoked credential (the key is shown to the operator once, and never logged).
CREATE TABLE eab_credentials (
    kid            text        PRIMARY KEY,                  -- random, url-safe
    hmac_key       bytea       NOT NULL CHECK (length(hmac_key) = 32),
    provisioner_id text        NOT NULL,                     -- the provisioner the account's orders are enrolled under
    profile        text,                                     -- their profile (null: CERTBUS_ACME_PROFILE)
    created_at     timestamptz NOT NULL,
    created_by     text        NOT NULL,
    account_id     text        UNIQUE REFERENCES accounts,   -- the account it bound, once; null until used
    bound_at       timestamptz,
    revoked_at     timestamptz
);

-- What an account's binding named (null for an account made without one, when EAB is not required).
ALTER TABLE accounts
    ADD COLUMN provisioner_id text,
    ADD COLUMN profile        text;
