"""Validation: the certificate status read model; answers relying parties over NATS and HTTP."""
