"""Validation's HTTP for relying parties that know nothing of NATS: CRLs, CA certificates and OCSP.

OCSP (RFC 6960 A.1) is answered at `/ocsp` by POST (body: the DER request) and at
`/ocsp/{base64 request}` by GET. The status comes from the replica's memory once a poll of the
status changes that began after the request arrived has completed (`StatusView`), and a signed
response is reused while the status it was signed for is still the status (see `ResponderSet`), so
a response cached by this replica is never stale, whichever replica consumed the revocation. GET
answers with a definite status and no nonce carry RFC 5019 caching headers.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Callable
from datetime import datetime
from email.utils import format_datetime
from urllib.parse import urlsplit

import asyncpg
from aiohttp import web
from cryptography.x509 import ocsp as x509_ocsp
from prometheus_client import Counter

from services.validation import store
from services.validation.ocsp import (
    MalformedRequest,
    OcspError,
    ResponderSet,
    decode_get,
    unsuccessful,
)
from services.validation.statuses import StatusView
from shared.base.clock import Clock
from shared.runtime.consumer import TRANSIENT_ERRORS

log = logging.getLogger("certbus.validation.http")
MAX_OCSP_REQUEST_BYTES = 4096  # a one-certificate request with a nonce is ~100 bytes
OCSP_REQUEST = "application/ocsp-request"
OCSP_RESPONSE = "application/ocsp-response"
NOT_CACHEABLE = {"Cache-Control": "no-store"}
TRY_LATER = unsuccessful(x509_ocsp.OCSPResponseStatus.TRY_LATER)
OCSP_RESPONSES = Counter("certbus_ocsp_responses_total", "OCSP responses sent, by outcome", ["outcome"])


def routes(
    pool: Callable[[], asyncpg.Pool],
    clock: Clock,
    public_base_url: str,
    responders: ResponderSet,
    statuses: StatusView,
) -> list[web.RouteDef]:
    """The relying-party routes, at the root and, if the public base URL has a path, under it too
    (so URLs embedded in certificates work with or without a path-stripping proxy in front). Served
    by the service's process and by each of its OCSP workers (`prefork`), each with its own pool."""

    async def get_crl(request: web.Request) -> web.Response:
        """An unsharded CA's CRL at /crl/{ca}.crl; a sharded CA's shard at /crl/{ca}/{shard}.crl."""
        shard = int(request.match_info["shard"]) if "shard" in request.match_info else None
        async with pool().acquire() as conn:
            row = await store.crl(conn, request.match_info["ca_id"], shard)
        if row is None:
            raise web.HTTPNotFound(text="no CRL for that issuer" if shard is None else "no CRL for that issuer shard")
        return web.Response(
            body=row["der"],
            content_type="application/pkix-crl",
            headers={"Cache-Control": "public, max-age=60"},
        )

    async def get_ca(request: web.Request) -> web.Response:
        async with pool().acquire() as conn:
            der = await store.ca_der(conn, request.match_info["ca_id"])
        if der is None:
            raise web.HTTPNotFound(text="no such CA")
        return web.Response(body=der, content_type="application/pkix-cert")

    async def answer(request_der: bytes) -> tuple[bytes, bool]:
        """The DER response, and whether HTTP caches may keep it (a definite status, no nonce)."""
        try:
            ocsp_request, responder = responders.prepare(request_der)
        except OcspError as exc:
            OCSP_RESPONSES.labels(exc.status.name.lower()).inc()
            return exc.response, False
        try:
            status = await statuses.status(responder.ca_id, ocsp_request.serial)
        except TRANSIENT_ERRORS as exc:
            log.warning("OCSP status lookup failed", extra={"error": repr(exc)})
            OCSP_RESPONSES.labels("try_later").inc()
            return TRY_LATER, False
        response = responders.answer(ocsp_request, responder, status, clock.now())
        if response == TRY_LATER:  # the responder certificate expired before its renewal
            OCSP_RESPONSES.labels("try_later").inc()
            return response, False
        OCSP_RESPONSES.labels(status.kind).inc()
        return response, ocsp_request.nonce is None and status.kind != "unknown"

    async def post_ocsp(request: web.Request) -> web.Response:
        if request.content_type != OCSP_REQUEST:
            raise web.HTTPUnsupportedMediaType(text=f"send the DER request as Content-Type: {OCSP_REQUEST}")
        response, _ = await answer(await _body(request))
        return web.Response(body=response, content_type=OCSP_RESPONSE)

    async def get_ocsp(request: web.Request) -> web.Response:
        try:
            request_der = decode_get(request.match_info["request"])
            if len(request_der) > MAX_OCSP_REQUEST_BYTES:
                raise MalformedRequest(f"the request is over {MAX_OCSP_REQUEST_BYTES} bytes")
        except MalformedRequest as exc:
            OCSP_RESPONSES.labels(exc.status.name.lower()).inc()
            return web.Response(body=exc.response, content_type=OCSP_RESPONSE, headers=NOT_CACHEABLE)
        response, cacheable = await answer(request_der)
        headers = cache_headers(response, clock.now()) if cacheable else NOT_CACHEABLE
        return web.Response(body=response, content_type=OCSP_RESPONSE, headers=headers)

    # The cacheable responses are the ones ResponderSet caches: parse each once, as many as it keeps.
    dates = functools.lru_cache(maxsize=responders.cache.max_entries)(_dates)

    def cache_headers(response: bytes, now: datetime) -> dict[str, str]:
        return _cache_headers(response, now, dates)

    found = []
    for prefix in dict.fromkeys(["", urlsplit(public_base_url).path.rstrip("/")]):
        found += [
            web.get(f"{prefix}/crl/{{ca_id}}.crl", get_crl),
            web.get(f"{prefix}/crl/{{ca_id}}/{{shard:[0-9]{{1,4}}}}.crl", get_crl),
            web.get(f"{prefix}/ca/{{ca_id}}.crt", get_ca),
            web.post(f"{prefix}/ocsp", post_ocsp),
            web.get(f"{prefix}/ocsp/{{request:.+}}", get_ocsp),  # base64 may hold '/' (or %2F)
        ]
    return found


async def _body(request: web.Request) -> bytes:
    """The request body, refused (413) beyond MAX_OCSP_REQUEST_BYTES whatever Content-Length says."""
    if request.content_length is not None and request.content_length > MAX_OCSP_REQUEST_BYTES:
        raise web.HTTPRequestEntityTooLarge(max_size=MAX_OCSP_REQUEST_BYTES, actual_size=request.content_length)
    body = bytearray()
    async for chunk in request.content.iter_chunked(1024):
        body += chunk
        if len(body) > MAX_OCSP_REQUEST_BYTES:
            raise web.HTTPRequestEntityTooLarge(max_size=MAX_OCSP_REQUEST_BYTES, actual_size=len(body))
    return bytes(body)


def _cache_headers(response: bytes, now: datetime, dates: Callable[[bytes], _Dated] | None = None) -> dict[str, str]:
    """RFC 5019 6.2: cacheable until nextUpdate, dated by thisUpdate, tagged by content."""
    dated = (dates or _dates)(response)
    if dated is None:
        return NOT_CACHEABLE
    next_update, fixed = dated
    max_age = max(0, int((next_update - now).total_seconds()))
    return {"Cache-Control": f"max-age={max_age}, public, no-transform, must-revalidate", **fixed}


_Dated = tuple[datetime, dict[str, str]] | None


def _dates(response: bytes) -> _Dated:
    """A response's nextUpdate and the headers that depend on it alone, parsed once per response."""
    parsed = x509_ocsp.load_der_ocsp_response(response)
    if parsed.response_status is not x509_ocsp.OCSPResponseStatus.SUCCESSFUL or parsed.next_update_utc is None:
        return None
    return parsed.next_update_utc, {
        "Last-Modified": format_datetime(parsed.this_update_utc, usegmt=True),
        "Expires": format_datetime(parsed.next_update_utc, usegmt=True),
        "ETag": f'"{hashlib.sha256(response).hexdigest()}"',
    }
