-- The operators who approved a pending request, one row each (their signatures verified): a profile
-- may ask for more than one (`approvals_required`, the two-person rule) before it is approved.
CREATE TABLE approvals (
    request_id  text        NOT NULL,
    operator    text        NOT NULL,
    approved_at timestamptz NOT NULL,
    PRIMARY KEY (request_id, operator)
);
