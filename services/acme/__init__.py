"""ACME (RFC 8555): the protocol core of the service that will let certbot, lego and every ACME client
enroll with Certbus. So far: the directory, nonces, JWS request checks and accounts. Orders,
challenges, finalize (an `EnrollmentRequested` carrying the service's attestation) and revokeCert
come next; this package holds no CA key and never will."""
