-- What the scheduled consistency checks know of each certificate (services/audit/check_store.py),
-- kept here rather than in the process: held in memory it grew by 400-500 bytes a certificate
-- (about 400 MiB at 1,000,000). Each batch of the log loads the rows its events name, is checked,
-- and stores them back with `check_cursor` in one transaction. Keys are `checks.text_of` texts.
CREATE TABLE check_approvals (
    request     text    PRIMARY KEY,
    approvals   integer NOT NULL,
    first_seq   bigint  NOT NULL,
    digest      text,
    supersedes  text
);

CREATE TABLE check_issued (
    issuer     text   NOT NULL,
    serial     text   NOT NULL,
    first_seq  bigint NOT NULL,
    PRIMARY KEY (issuer, serial)
);

CREATE TABLE check_serials (
    serial         text   PRIMARY KEY,
    spki_sha256    text,
    destroyed_seq  bigint
);

-- Every revocation of an issued certificate, with the CRL that must list it (`checks.crl_key`).
CREATE TABLE check_revocations (
    stream_seq  bigint      PRIMARY KEY,
    issuer      text        NOT NULL,
    serial      text        NOT NULL,
    revoked_at  timestamptz,
    crl_key     text        NOT NULL,
    shard       integer
);
CREATE INDEX check_revocations_crl ON check_revocations (crl_key, stream_seq);

-- How far the checks have read the chained archive (the chain's hash there), which process's run
-- the rows above belong to, and what its checker knew there besides them (its CAs, profiles and
-- operators: `checks.Checker.state`), from which another process goes on.
CREATE TABLE check_cursor (
    id       boolean PRIMARY KEY DEFAULT true CHECK (id),
    through  bigint  NOT NULL,
    hash     bytea   NOT NULL,
    run      uuid,
    state    jsonb
);
INSERT INTO check_cursor (through, hash) VALUES (0, '\x0000000000000000000000000000000000000000000000000000000000000000');
