"""Audit: the verbatim, hash-chained archive of every event; history and replay."""
