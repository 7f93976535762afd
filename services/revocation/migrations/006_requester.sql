-- The identity NATS authenticated for the request a certificate answers (CertificateIssued.requester):
-- that requester may ask for it to be revoked without the certificate's key (not for keyCompromise
-- or cACompromise). NULL for certificates learnt before it was recorded: only a proof or an operator.
ALTER TABLE certificates ADD COLUMN requester text;
