"""Signing: the only holder of CA private keys; issues certificates and signs CRLs."""
