"""The bounds of everything that crosses the bus: every string and list an event or query carries
has a maximum, so that one hostile message cannot make a consumer, the archive or a report spend
unbounded memory, index space or time.

The limits are generous for honest use (a 4096-bit RSA certificate is under 2 KiB of PEM, a chain
of three under 8 KiB) and tight for abuse. A message over `MAX_EVENT_BYTES` is not parsed at all.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, StringConstraints

# A whole event, as JSON. The stream refuses anything over STREAM_MAX_MSG_BYTES, so what lies
# between the two is archived and flagged by audit, and parked (never applied) by every consumer.
MAX_EVENT_BYTES = 192 * 1024
STREAM_MAX_MSG_BYTES = 256 * 1024
# A request a client puts on the ingress stream (a CSR, a token, a proof): much smaller.
MAX_REQUEST_BYTES = 64 * 1024
# JSON nesting: no event nests deeper than a handful of levels.
MAX_JSON_DEPTH = 32

MAX_NAMES = 1000  # SANs in one certificate (a profile caps far lower: max_sans <= 1000)
MAX_REASONS = 32
MAX_FINDINGS = 256
MAX_SIGNATURES = 16
MAX_SCOPE = 256  # profiles or name suffixes a provisioner is scoped to

# An identifier that is also one subject token: request, certificate, CA and provisioner ids.
Id = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
# A short name: event types, codes, service and operator names, profile names, key types.
Short = Annotated[str, StringConstraints(max_length=128)]
# A DNS name, an email address or an IP address as text.
NameText = Annotated[str, StringConstraints(max_length=320)]
# Free text a person wrote or reads: reasons, comments, lint messages.
Text = Annotated[str, StringConstraints(max_length=2048)]
# One PEM object (a certificate, a CSR, a public key).
Pem = Annotated[str, StringConstraints(max_length=32 * 1024)]
# A PEM chain (issuing CA and root).
ChainPem = Annotated[str, StringConstraints(max_length=64 * 1024)]
# A one-time enrollment token (a compact JWS).
Token = Annotated[str, StringConstraints(max_length=8 * 1024)]
# A base64 signature or public key (RSA-8192 signatures are 1368 characters).
Base64 = Annotated[str, StringConstraints(max_length=4096)]
# A compact JWS a client signed (an ACME revokeCert request: its payload carries a certificate).
Jws = Annotated[str, StringConstraints(max_length=24 * 1024)]
# A certificate serial in hex (RFC 5280: at most 20 octets; a little slack for leading zeros).
Serial = Annotated[str, Field(pattern=r"^[0-9a-f]{1,64}$")]
# A serial as a requester typed it (normalised later): hex, maybe with colons or a 0x prefix.
SerialText = Annotated[str, StringConstraints(max_length=128)]
Sha256Hex = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
# Identifiers that are not subject tokens but name things on the log (an object in the store).
Ref = Annotated[str, StringConstraints(max_length=256)]

Names = Annotated[list[NameText], Field(max_length=MAX_NAMES)]
