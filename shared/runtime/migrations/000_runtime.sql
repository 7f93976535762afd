-- Tables every service has in its own schema: tracking, outbox, parked messages.

-- One row per (consumer, event) applied; written in the same transaction as the projection,
-- so a redelivered event changes nothing.
CREATE TABLE tracking (
    consumer    text        NOT NULL,
    event_id    uuid        NOT NULL,
    stream_seq  bigint,
    applied_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);

-- Events decided in a transaction, published after it commits (same event id on every retry).
CREATE TABLE outbox (
    id            bigserial   PRIMARY KEY,
    event_id      uuid        NOT NULL UNIQUE,
    subject       text        NOT NULL,
    payload       bytea       NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    attempts      int         NOT NULL DEFAULT 0,
    published_at  timestamptz,
    stream_seq    bigint,
    alarm         text
);
CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL;

-- Messages that can never be applied, kept with the reason (never silently dropped).
CREATE TABLE parked (
    id          bigserial   PRIMARY KEY,
    consumer    text        NOT NULL,
    subject     text        NOT NULL,
    stream_seq  bigint,
    payload     bytea       NOT NULL,
    reason      text        NOT NULL,
    parked_at   timestamptz NOT NULL DEFAULT now()
);
