-- Event payloads are JSON around base64 (certificates, CSRs, signatures): PostgreSQL's default
-- compression tried each one over 2 kB and kept none (a CertificateIssued of 3.4 kB stored 3.4 kB),
-- for about 18 us a row. They are stored as they are.
ALTER TABLE outbox ALTER COLUMN payload SET STORAGE EXTERNAL;
