-- The service's replicas (shared.runtime.replicas): each writes its own health report here every
-- few seconds and deletes its row when it stops gracefully, so that whichever replica answers the
-- health query can list them all. A row not written for ten minutes is forgotten.
CREATE TABLE replicas (
    instance  text         PRIMARY KEY CHECK (instance <> '' AND octet_length(instance) <= 128),
    pid       int          NOT NULL,
    started   timestamptz  NOT NULL,
    seen      timestamptz  NOT NULL DEFAULT now(),
    report    jsonb        NOT NULL CHECK (octet_length(report::text) <= 32768)
);
