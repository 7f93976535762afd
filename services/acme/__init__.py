"""ACME (RFC 8555): the service that lets certbot, lego and every ACME client enroll with Certbus.

It holds no CA key and never will: a finalized order becomes an `EnrollmentRequested` on the bus,
published under the ACME service's own requester identity with a one-time token its provisioner
key signs for the names it validated (its attestation), and enrollment judges it by the profile
like any other request. See docs/acme.md for what is served and what comes next.
"""
