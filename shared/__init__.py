"""Code that two or more Certbus services (or their clients) need; never a CA private key.

Layers, top to bottom; a layer imports only from layers below it (`lint-imports` checks it, see
`[tool.importlinter]` in pyproject.toml):

    shared.admin                      certbus-admin: creates the log, renders the NATS accounts
    shared.runtime | shared.client    a service's machinery | the requester's and operator's side
    shared.trust                      who may do what: NATS accounts, identities, operator signatures
    shared.pki                        certificates, keys, DER, provisioner tokens, linting
    shared.contract | shared.base     the wire (events, queries, reasons) | settings, clock, files, logs

The two sides of the bus never import each other: a service uses the client side only through
`shared.client.api`, where it acts as a client itself.
"""
