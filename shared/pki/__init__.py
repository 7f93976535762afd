"""PKI helpers: keys, CSRs and certificates (`crypto`; the key types by name in `key_types`), DER
details (`der`), provisioner tokens (`tokens`), certificate linting (`lint`) and what a certificate
holder signs (`holder`). Built on the contract only; no I/O beyond what a caller hands in."""
