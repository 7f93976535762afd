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
