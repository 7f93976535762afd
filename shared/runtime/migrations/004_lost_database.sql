-- Set when this schema was created new while the service's durable consumers on the log had
-- already consumed events: the service lost its database. It refuses to start while a row is
-- here (restore the database), so it never decides anything on empty tables.
CREATE TABLE lost_database (
    durable      text        PRIMARY KEY CHECK (length(durable) <= 200),
    ack_floor    bigint      NOT NULL,
    detected_at  timestamptz NOT NULL DEFAULT now()
);
