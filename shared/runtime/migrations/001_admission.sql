-- Admission from the ingress stream (shared.admission): in every service's schema, used by those
-- that admit requests (enrollment, revocation).

-- Each request id is answered once, for one identity: admitted onto the log, or refused.
CREATE TABLE admission_claims (
    aggregate     text        NOT NULL,
    aggregate_id  text        NOT NULL,
    identity      text        NOT NULL,
    outcome       text        NOT NULL,  -- 'admitted' or the refusal's code
    claimed_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (aggregate, aggregate_id)
);

-- Requests admitted and refusals put on the log, per identity and minute (by when the ingress
-- stream accepted them): the rate limit, and the bound on what one identity's junk puts on the log.
CREATE TABLE admission_windows (
    identity      text        NOT NULL,
    window_start  timestamptz NOT NULL,
    admitted      int         NOT NULL DEFAULT 0,
    refused       int         NOT NULL DEFAULT 0,
    PRIMARY KEY (identity, window_start)
);
