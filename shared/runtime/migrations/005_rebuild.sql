-- A rebuild from the log after the database was lost (shared.runtime.rebuild).

-- What the service had published on the log, by cause, when the rebuild began.
CREATE TABLE recorded (
    causation_id  text    NOT NULL,
    event_type    text    NOT NULL,
    aggregate_id  text    NOT NULL,
    event_id      uuid    NOT NULL,
    stream_seq    bigint  NOT NULL,
    PRIMARY KEY (causation_id, aggregate_id, event_type)
);

CREATE TABLE rebuilds (
    id           bigserial   PRIMARY KEY,
    through_seq  bigint      NOT NULL,  -- the log's last sequence when it began
    recorded     int         NOT NULL,  -- the service's own events read back
    read_s       float8      NOT NULL,
    durables     text[]      NOT NULL,  -- those made again from sequence 1
    started_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    applied      int,                   -- events its consumers applied again (up to through_seq)
    suppressed   int,                   -- decisions made again that the log already held
    divergent    int                    -- decisions made again that the log answered otherwise
);

-- An outbox row whose event answers a cause the log already holds an answer to is never sent:
-- published as it is inserted (at the sequence the log holds the answer at). Another answer than
-- the log's (another event type on the same aggregate) is not sent either, and keeps an alarm.
ALTER TABLE outbox ADD COLUMN suppressed boolean NOT NULL DEFAULT false;

CREATE FUNCTION outbox_recorded() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    body jsonb;
    held recorded%ROWTYPE;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM recorded) THEN
        RETURN NEW;
    END IF;
    body := convert_from(NEW.payload, 'UTF8')::jsonb;
    IF body->>'causation_id' IS NULL THEN
        RETURN NEW;
    END IF;
    SELECT * INTO held FROM recorded r
     WHERE r.causation_id = body->>'causation_id' AND r.aggregate_id = body->>'aggregate_id'
     ORDER BY (r.event_type = body->>'event_type') DESC LIMIT 1;
    IF FOUND THEN
        NEW.suppressed := true;
        NEW.published_at := now();
        NEW.stream_seq := held.stream_seq;
        IF held.event_type <> body->>'event_type' THEN
            NEW.alarm := format('rebuild divergence: the log answered this cause with %s (seq %s), not %s',
                                held.event_type, held.stream_seq, body->>'event_type');
        END IF;
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER outbox_recorded BEFORE INSERT ON outbox FOR EACH ROW EXECUTE FUNCTION outbox_recorded();

-- A lost database is rebuilt now, no longer refused: the refusal's record goes.
DROP TABLE IF EXISTS lost_database;
