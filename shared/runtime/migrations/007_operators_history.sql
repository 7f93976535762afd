-- The operators' registry with its history: each key from the log position that registered it to
-- the one that replaced or removed it (ended_seq), each quorum from the position that set it. A
-- command at position S is judged by the registry as it was just before S, whichever of the
-- service's consumers of operator commands reads it and however far the others have read: signing
-- reads the ceremony's commands in a consumer of their own, beside its approvals.
ALTER TABLE operators ADD COLUMN ended_seq bigint;
ALTER TABLE operators DROP CONSTRAINT operators_pkey;
ALTER TABLE operators ADD PRIMARY KEY (name, registered_seq);

-- A quorum set before this migration counts from the start of the log.
ALTER TABLE quorums ADD COLUMN set_seq bigint NOT NULL DEFAULT 0;
ALTER TABLE quorums DROP CONSTRAINT quorums_pkey;
ALTER TABLE quorums ADD PRIMARY KEY (kind, set_seq);

-- How far the registry's own commands are recorded: a consumer reading one at or below this
-- position judges it, and records nothing (another consumer did, or it predates this migration,
-- whose removed operators left no row: reading their registrations again must not bring them back).
CREATE TABLE registry_position (
    through  bigint  NOT NULL
);
-- Before it, one consumer of the service applied the registry: the one that tracked every
-- registration still in the table (not an ingress consumer, `<service>-admit`, whose positions are
-- another stream's). Everything up to its position is in the table already.
INSERT INTO registry_position (through)
SELECT coalesce(
    (SELECT max(t.stream_seq) FROM tracking t WHERE t.consumer = (
        SELECT k.consumer FROM tracking k JOIN operators o ON k.stream_seq = o.registered_seq
        WHERE k.consumer NOT LIKE '%-admit'
        GROUP BY k.consumer HAVING count(*) = (SELECT count(*) FROM operators)
        ORDER BY k.consumer LIMIT 1)),
    (SELECT max(registered_seq) FROM operators),
    0);
