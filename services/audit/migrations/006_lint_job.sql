-- Post-issuance pkilint is a background job over the archive (services/audit/lint_job.py), not a
-- consumer on issuance's path. `lint_cursor` is how far in the log it has gone; `lint_results`
-- what it found for each certificate it linted; `lint_passed_over` each stretch of certificates it
-- did not lint because its backlog had reached its bound. Together they are its stated coverage.
CREATE TABLE lint_cursor (
    id       boolean PRIMARY KEY DEFAULT true CHECK (id),
    through  bigint  NOT NULL
);
INSERT INTO lint_cursor (through) VALUES (0);

CREATE TABLE lint_results (
    stream_seq  bigint      PRIMARY KEY,
    profile     text        NOT NULL,
    failed      boolean     NOT NULL,
    linted_at   timestamptz NOT NULL
);

CREATE TABLE lint_passed_over (
    after_seq     bigint      PRIMARY KEY,
    through_seq   bigint      NOT NULL,
    certificates  integer     NOT NULL,
    at            timestamptz NOT NULL
);

CREATE INDEX archive_issued ON archive (stream_seq) WHERE event_type = 'CertificateIssued';
