-- Wildcard names (RFC 8555 §7.1.4): the authorization of a `*.base` identifier is for `base` and says
-- so with "wildcard": true; it offers dns-01 only. Its `name` is the base, so that validations,
-- and the failed validations counted per name, are the base name's.
ALTER TABLE authorizations ADD COLUMN wildcard boolean NOT NULL DEFAULT false;
