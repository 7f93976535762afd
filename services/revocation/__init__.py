"""Revocation: decides revocation requests and publishes revocations."""
