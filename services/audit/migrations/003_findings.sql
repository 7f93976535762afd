-- Findings of the scheduled consistency checks, each raised (published) once.
CREATE TABLE findings (
    check_name  text        NOT NULL,
    stream_seq  bigint      NOT NULL,
    detail      text        NOT NULL,
    raised_at   timestamptz NOT NULL,
    PRIMARY KEY (check_name, stream_seq)
);
