-- Every profile version signing has seen (approvals name the version they were judged by), the
-- lint verdict on each under each issuing CA, and certificates refused before release.
CREATE TABLE profiles (
    digest      text        PRIMARY KEY,
    name        text        NOT NULL,
    body        jsonb       NOT NULL,
    applied_at  timestamptz NOT NULL
);

CREATE TABLE current_profiles (
    name    text PRIMARY KEY,
    digest  text NOT NULL REFERENCES profiles (digest)
);

CREATE TABLE profile_lints (
    digest     text        NOT NULL REFERENCES profiles (digest),
    issuer_id  text        NOT NULL REFERENCES cas (ca_id),
    usable     boolean     NOT NULL,
    findings   jsonb       NOT NULL,
    linted_at  timestamptz NOT NULL,
    PRIMARY KEY (digest, issuer_id)
);

-- A signed certificate that failed its pre-release check is never published: the refusal is kept
-- so that a redelivered approval does not sign again.
ALTER TABLE issuances ADD COLUMN refused jsonb;
