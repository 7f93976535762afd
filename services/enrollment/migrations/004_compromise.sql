-- Enrollment tells a holder to renew at once when its certificate is revoked because its CA was
-- compromised (revocation used to send that event itself; each subject now has one publisher).
-- `compromise_due` is the cause to send, `compromise_due_sent` whether it is on the log yet (set
-- when the schedule sends it and again when it is read back, like the other scheduled events).
ALTER TABLE certificates ADD COLUMN compromise_due text CHECK (compromise_due IN ('ca_compromise', 'key_compromise'));
ALTER TABLE certificates ADD COLUMN compromise_due_sent boolean NOT NULL DEFAULT false;
CREATE INDEX certificates_compromise_unsent ON certificates (cert_id)
    WHERE compromise_due IS NOT NULL AND NOT compromise_due_sent;
