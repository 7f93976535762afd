-- CRL shards: the newest CRL of each shard of a sharded CA (shard 0..n-1), and of each unsharded
-- CA (shard -1: its only CRL, served at the URL it always had).
ALTER TABLE crls ADD COLUMN shard integer NOT NULL DEFAULT -1;
ALTER TABLE crls DROP CONSTRAINT crls_pkey;
ALTER TABLE crls ADD PRIMARY KEY (ca_id, shard);
