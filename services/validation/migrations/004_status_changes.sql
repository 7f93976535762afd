-- Every change of a serial's OCSP status (revoked, destroyed) or of a whole CA's (compromised), written
-- in the transaction that makes it. Each replica keeps statuses in memory and polls this table before
-- answering from memory (services/validation/statuses.py); `xid` is the writing transaction, so that
-- a poll can ask for everything not yet committed at its previous poll. Rows are pruned after a bound.
CREATE TABLE status_changes (
    id          bigserial   PRIMARY KEY,
    xid         xid8        NOT NULL DEFAULT pg_current_xact_id(),
    serial      text,       -- NULL: every certificate of `ca_id` (a CA compromise)
    ca_id       text,
    changed_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX status_changes_xid ON status_changes (xid);
CREATE INDEX status_changes_changed_at ON status_changes (changed_at);
