-- Signed checkpoints of the hash chain (the events themselves are on the log, and archived).
CREATE TABLE checkpoints (
    stream_seq  bigint      PRIMARY KEY,
    chain_hash  bytea       NOT NULL,
    signed_at   timestamptz NOT NULL,
    signature   bytea       NOT NULL,
    public_key  bytea       NOT NULL
);
