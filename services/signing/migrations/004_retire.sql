-- A retired CA's way to the end, one step per column so that a crash resumes where it stopped:
-- retired (nothing new is signed by it), final CRL signed (final_crl_at; its number, if one could
-- be signed), key destroyed (key_destroyed_at, with CaKeyDestroyed in the same transaction).
-- The final CRL waits until signing has read every revocation before the CaRetired on the log.
CREATE TABLE retirements (
    ca_id                 text        PRIMARY KEY REFERENCES cas (ca_id),
    event_id              uuid        NOT NULL,
    stream_seq            bigint      NOT NULL,  -- the CaRetired's log position
    correlation_id        text        NOT NULL,
    retired_by            text        NOT NULL,
    retired_at            timestamptz NOT NULL,
    final_crl_number      bigint,
    final_crl_event_id    uuid,
    final_crl_at          timestamptz,
    key_destroyed_at      timestamptz
);
