-- What a requester may page through to catch up on revocations (the `revocations` query): the
-- archived CertificateRevoked events, in log order.
CREATE INDEX archive_revocations ON archive (stream_seq) WHERE event_type = 'CertificateRevoked';
