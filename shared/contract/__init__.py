"""The wire contract: what travels on the bus and what it means.

Events and their subjects (`events`, `binding`), the ingress grammar (`ingress`), request/reply
queries (`queries`), reason codes (`reasons`), the revocation reasons by name (`revocation_reasons`),
certificate profiles (`profiles`) and the bounds every field has (`bounds`). It imports nothing else
of Certbus: a client in another codebase could vendor it.
"""
