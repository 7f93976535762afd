-- The archive: every event verbatim, in stream order, hash-chained once contiguous.
CREATE TABLE archive (
    stream_seq    bigint      PRIMARY KEY,
    subject       text        NOT NULL,
    raw           bytea       NOT NULL,
    event_id      uuid,
    event_type    text        NOT NULL,
    aggregate_id  text,
    producer      text,
    occurred_at   timestamptz,
    hash          bytea
);
CREATE INDEX archive_aggregate ON archive (aggregate_id, stream_seq);

-- Serial -> events that name it (issued, revoked, revocation requests, ...).
CREATE TABLE serial_refs (
    serial      text   NOT NULL,
    stream_seq  bigint NOT NULL REFERENCES archive (stream_seq),
    cert_id     text,
    PRIMARY KEY (serial, stream_seq)
);

CREATE TABLE chain_head (
    id    int    PRIMARY KEY CHECK (id = 1),
    seq   bigint NOT NULL,
    hash  bytea  NOT NULL
);
INSERT INTO chain_head VALUES (1, 0, '\x0000000000000000000000000000000000000000000000000000000000000000');
