-- CRL shards: a CA created with `crl_shards` publishes one CRL per shard (a leaf is in shard
-- serial mod crl_shards); a CA without it (NULL, created before shards) keeps one CRL, shard 0.
ALTER TABLE cas ADD COLUMN crl_shards integer CHECK (crl_shards > 0);

-- Each revocation's shard, fixed when it is recorded, so that a shard's CRL reads only its own rows.
ALTER TABLE revoked ADD COLUMN shard integer NOT NULL DEFAULT 0;
CREATE INDEX revoked_shard ON revoked (issuer_id, shard, id);

-- Per issuer and shard: the last CRL signed and how far into `revoked` it reached.
ALTER TABLE crl_state ADD COLUMN shard integer NOT NULL DEFAULT 0;
ALTER TABLE crl_state DROP CONSTRAINT crl_state_pkey;
ALTER TABLE crl_state ADD PRIMARY KEY (ca_id, shard);
