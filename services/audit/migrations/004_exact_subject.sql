-- The exact subject of a message whose subject the text column cannot hold (a NUL, or bytes that are
-- not UTF-8): `subject` then holds it made printable, and the hash chain covers these bytes. NULL
-- for every other message. Every other column is bounded by the code that fills it (aggregate_id is
-- an Id of at most 64 characters, so `archive_aggregate` never meets a row too large for a btree).
ALTER TABLE archive ADD COLUMN subject_exact bytea;
