-- The operators' keys and the quorums (shared.operators), as this service's consumer of operator
-- commands has read them from the log: a command is judged by them as they were just before it.
CREATE TABLE operators (
    name            text    PRIMARY KEY,
    public_key      bytea   NOT NULL,  -- SubjectPublicKeyInfo DER (Ed25519 or EC P-256)
    registered_seq  bigint  NOT NULL
);

CREATE TABLE quorums (
    kind      text  PRIMARY KEY,  -- operator, ca_compromise, ca_retire
    required  int   NOT NULL CHECK (required >= 1)
);
