-- How many archived events the chain covers (every one up to its head), kept as the chain advances.
-- A checkpoint names it; counting the archive for every checkpoint took longer as the archive grew.
ALTER TABLE chain_head ADD COLUMN events bigint;
UPDATE chain_head SET events = (SELECT count(*) FROM archive WHERE stream_seq <= chain_head.seq);
ALTER TABLE chain_head ALTER COLUMN events SET NOT NULL;
