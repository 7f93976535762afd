"""ACME (RFC 8555): the protocol core of the service that will let certbot, lego and every ACME client
enroll with Certbus. So far: the directory, nonces, JWS request checks, accounts, orders,
authorizations and the http-01 / tls-alpn-01 challenges. Finalize (an `EnrollmentRequested`
carrying the service's attestation), revokeCert and the service's composition root come next; this package holds no CA key and never will."""
