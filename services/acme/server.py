"""ACME's HTTP resources (RFC 8555 §7): the directory, nonces and accounts.

Every POST is a JWS checked by `jws` before anything else: its signature (with the key it carries,
for newAccount, or the key of the account its `kid` names), the URL it says it was sent to against
the URL it reached, then its nonce, spent once at any replica (nonces live in PostgreSQL). Every
response carries a fresh nonce and a link to the directory; every refusal is a problem document.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from services.acme import eab, jws, lifecycle, store
from services.acme.challenges import TYPES, WILDCARD_TYPES, Validator
from services.acme.finalize import Finalizer, StillPending
from services.acme.lifecycle import Revoker
from services.acme.problems import AcmeProblem, malformed, unauthorized
from shared.base.clock import Clock, SystemClock
from shared.client.api import Unreachable
from shared.contract.events import EnrollmentRequested
from shared.contract.profiles import dns_syntax_problem
from shared.contract.revocation_reasons import REASON_CODES
from shared.pki.crypto import normalise_serial
from shared.runtime.consumer import TRANSIENT_ERRORS
from shared.trust import eab as credentials

log = logging.getLogger("certbus.acme")
HOUR = timedelta(hours=1)
UNAVAILABLE: tuple[type[BaseException], ...] = (OSError, TimeoutError, *TRANSIENT_ERRORS)
JOSE_JSON = "application/jose+json"
MAX_CONTACT_CHARS = 320


@dataclass(frozen=True)
class AcmeConfig:
    """Where clients reach the server (its URLs are built from `base_url`) and its account policy."""

    base_url: str
    nonce_ttl: timedelta = timedelta(minutes=10)
    terms_of_service: str | None = None
    # RFC 8555 §7.3.4: a new account must carry an external account binding (an account that has one
    # is enrolled under the provisioner its credential names, whether or not it is required).
    eab_required: bool = True
    max_contacts: int = 4
    order_ttl: timedelta = timedelta(days=7)  # an order and its authorizations, as Boulder's pending ones
    max_identifiers: int = 100
    validator: Validator = field(default_factory=Validator)
    challenge_types: tuple[str, ...] = TYPES
    # A validation left `processing` this long (its replica stopped) may be started again.
    stale_validation: timedelta = timedelta(minutes=1)
    max_orders_listed: int = 100
    # Rate limits, per hour: orders an account may create, and failed validations an account may
    # have for one name before it must wait (Let's Encrypt allows 5); 0 means no limit.
    orders_per_hour: int = 300
    failed_validations_per_hour: int = 5
    # Turns a finalized order into an enrollment request on the bus; None: finalize is not served.
    finalizer: Finalizer | None = None
    # An order still processing this long after its finalize (its replica stopped, the bus was
    # down, or an operator's approval was awaited) is submitted again by `sweep`.
    finalize_retry: timedelta = timedelta(seconds=30)
    # Publishes revocations and reads certificates' status on the bus; None: revokeCert and
    # renewalInfo are not served.
    revoker: Revoker | None = None
    # How often ARI clients are asked to check a certificate's renewal window again.
    renewal_info_retry: timedelta = timedelta(hours=6)

    def url(self, path: str) -> str:
        return self.base_url.rstrip("/") + path


@dataclass(frozen=True)
class Request:
    """A POST that passed the JWS checks: its payload (None for POST-as-GET) and who signed it."""

    payload: dict[str, Any] | None
    jwk: dict[str, Any]
    account: asyncpg.Record | None  # None for a request signed with its own key (newAccount)
    compact: str = ""  # the JWS as received (protected.payload.signature)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Acme:
    """The resources, over a pool on schema `acme`."""

    def __init__(self, pool: Callable[[], asyncpg.Pool], config: AcmeConfig, clock: Clock | None = None) -> None:
        self._pool = pool
        self.config = config
        self.clock = clock or SystemClock()
        self._validations: set[asyncio.Task[None]] = set()
        self._finalizing: dict[str, asyncio.Task[None]] = {}  # by order id

    async def close(self) -> None:
        """Stop the validations and finalizations in flight (what they left processing is taken up
        again: a challenge after stale_validation, an order by the next `sweep`)."""
        tasks = [*self._validations, *self._finalizing.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/acme/directory", self._answer(self.directory)),
            web.head("/acme/new-nonce", self._answer(self.new_nonce)),
            web.get("/acme/new-nonce", self._answer(self.new_nonce), allow_head=False),
            web.post("/acme/new-account", self._answer(self.new_account)),
            web.post("/acme/acct/{account_id}", self._answer(self.account)),
            web.post("/acme/acct/{account_id}/orders", self._answer(self.orders)),
            web.post("/acme/key-change", self._answer(self.key_change)),
            web.post("/acme/new-order", self._answer(self.new_order)),
            web.post("/acme/order/{order_id}", self._answer(self.order)),
            web.post("/acme/order/{order_id}/finalize", self._answer(self.finalize)),
            web.post("/acme/authz/{authz_id}", self._answer(self.authorization)),
            web.post("/acme/chall/{challenge_id}", self._answer(self.challenge)),
            web.post("/acme/cert/{order_id}", self._answer(self.certificate)),
            web.post("/acme/revoke-cert", self._answer(self.revoke_cert)),
            web.get("/acme/renewal-info/{cert_id}", self._answer(self.renewal_info)),
        ]

    def application(self) -> web.Application:
        app = web.Application(client_max_size=jws.MAX_BODY_BYTES)
        app.add_routes(self.routes())
        return app

    def _answer(self, handler: Handler) -> Handler:
        """Every answer, success or problem, with the directory's link, and a fresh nonce unless it is
        the directory's (RFC 8555 §6.5 asks one of every POST answer and of newNonce)."""

        async def answer(request: web.Request) -> web.StreamResponse:
            try:
                response = await handler(request)
            except AcmeProblem as problem:
                response = problem.response()
            except UNAVAILABLE as e:  # the database: nothing was done; the client may try again
                log.warning("ACME request failed: database unavailable", extra={"error": repr(e)[:300]})
                response = AcmeProblem("serverInternal", "temporarily unavailable: try again", 503).response(
                    {"Retry-After": "5"}
                )
            if request.method != "GET" or request.path == "/acme/new-nonce":  # not on the directory: no write
                try:
                    response.headers["Replay-Nonce"] = await self._nonce()
                except UNAVAILABLE:
                    pass  # the client gets a fresh nonce from newNonce once the database is back
            response.headers["Cache-Control"] = "no-store"
            response.headers.add("Link", f'<{self.config.url("/acme/directory")}>;rel="index"')
            return response

        return answer

    async def _nonce(self) -> str:
        async with self._pool().acquire() as conn:
            return await store.issue_nonce(conn, self.clock.now(), self.config.nonce_ttl)

    async def prune(self) -> int:
        """Forget expired nonces (run now and then by the service)."""
        async with self._pool().acquire() as conn:
            return await store.prune_nonces(conn, self.clock.now())

    # -- the checks every POST passes ---------------------------------------------------------------

    async def _checked(self, request: web.Request, *, own_key: bool | None) -> Request:
        """`own_key`: signed with the key it carries (True), by an account (False), or either (None)."""
        if request.content_type != JOSE_JSON:
            raise AcmeProblem("malformed", f"Content-Type must be {JOSE_JSON}", 415)
        envelope = jws.parse(await request.read())
        account: asyncpg.Record | None = None
        if own_key is None:
            own_key = envelope.jwk is not None
        if own_key:
            if envelope.jwk is None:
                raise malformed("this request must be signed with a jwk, not a kid")
            jwk = envelope.jwk
        else:
            if envelope.kid is None:
                raise malformed("this request must name its account with kid, not carry a jwk")
            account = await self._account_of(envelope.kid)
            jwk = account["jwk"]
        payload = envelope.verify(jwk)
        if envelope.url != self.config.url(request.path):
            raise unauthorized(f"JWS url {envelope.url[:200]!r} is not the URL this request was sent to")
        async with self._pool().acquire() as conn:
            if not await store.use_nonce(conn, envelope.nonce, self.clock.now()):
                raise AcmeProblem("badNonce", "nonce was not issued here, was used already, or expired")
        if account is not None and account["status"] != "valid":
            raise unauthorized(f"account is {account['status']}")
        return Request(jws.payload_object(payload), jwk, account, envelope.compact)

    async def _account_of(self, kid: str) -> asyncpg.Record:
        prefix = self.config.url("/acme/acct/")
        account_id = kid.removeprefix(prefix)
        if account_id == kid or not account_id or "/" in account_id:
            raise AcmeProblem("accountDoesNotExist", "kid is not an account URL of this server")
        async with self._pool().acquire() as conn:
            row = await store.account(conn, account_id)
        if row is None:
            raise AcmeProblem("accountDoesNotExist", "no account at that kid")
        return row

    # -- resources -----------------------------------------------------------------------------------

    async def directory(self, request: web.Request) -> web.StreamResponse:
        # Only what is served is listed: newOrder once orders can be finalized, revokeCert and
        # renewalInfo once revocations can be published and statuses read.
        meta: dict[str, Any] = {"externalAccountRequired": self.config.eab_required}
        if self.config.terms_of_service:
            meta["termsOfService"] = self.config.terms_of_service
        directory: dict[str, Any] = {
            "newNonce": self.config.url("/acme/new-nonce"),
            "newAccount": self.config.url("/acme/new-account"),
            "keyChange": self.config.url("/acme/key-change"),
        }
        if self.config.finalizer is not None:
            directory["newOrder"] = self.config.url("/acme/new-order")
        if self.config.revoker is not None:
            directory["revokeCert"] = self.config.url("/acme/revoke-cert")
            directory["renewalInfo"] = self.config.url("/acme/renewal-info")
        return web.json_response({**directory, "meta": meta})

    async def new_nonce(self, request: web.Request) -> web.StreamResponse:
        return web.Response(status=200 if request.method == "HEAD" else 204)

    async def new_account(self, request: web.Request) -> web.StreamResponse:
        checked = await self._checked(request, own_key=True)
        body = checked.payload or {}
        thumbprint = jws.thumbprint(checked.jwk)
        now = self.clock.now()
        async with self._pool().acquire() as conn:
            existing = await store.account_by_thumbprint(conn, thumbprint)
            if existing is not None:
                return self._account_response(existing, 200)
            if body.get("onlyReturnExisting") is True:
                raise AcmeProblem("accountDoesNotExist", "no account has this key")
            contact = self._contacts(body.get("contact", []))
            agreed = body.get("termsOfServiceAgreed", False)
            if not isinstance(agreed, bool):
                raise malformed("termsOfServiceAgreed must be true or false")
            if self.config.terms_of_service and not agreed:
                raise malformed(f"the terms of service ({self.config.terms_of_service}) must be agreed to")
            binding = body.get("externalAccountBinding")
            kid: str | None = None  # the credential's key id, if the account was bound (never its key)
            if binding is None:
                if self.config.eab_required:
                    raise AcmeProblem(
                        "externalAccountRequired",
                        "this server requires an external account binding: ask its operator for a key id and "
                        "HMAC key (`certbus acme eab create`)",
                    )
                row, created = await store.create_account(conn, thumbprint, checked.jwk, contact, agreed, now)
            else:
                credential = await self._credential(conn, binding, checked.jwk)
                bound = await store.create_bound_account(
                    conn, thumbprint, checked.jwk, contact, agreed, now, credential
                )
                if bound is None:
                    raise unauthorized("the external account binding's key id was used or revoked meanwhile")
                row, created = bound
                kid = credential.kid
        if created:
            log.info(
                "ACME account created",
                extra={
                    "account": row["account_id"],
                    "thumbprint": thumbprint,
                    "provisioner": row["provisioner_id"],
                    "eab_kid": kid,
                },
            )
        return self._account_response(row, 201 if created else 200)

    async def _credential(
        self, conn: asyncpg.Connection, binding: object, jwk: dict[str, Any]
    ) -> credentials.Credential:
        """The credential an external account binding names, once its HMAC and key check out, if it
        may still bind an account (RFC 8555 §7.3.4)."""
        parsed = eab.parse(binding, self.config.url("/acme/new-account"))
        found = await credentials.key_of(conn, parsed.kid)
        if found is None:
            raise unauthorized("the external account binding's key id is unknown")
        hmac_key, credential = found
        eab.verify(parsed, hmac_key, jwk)
        if credential.revoked_at is not None:
            raise unauthorized("the external account binding's key id was revoked")
        if credential.account_id is not None:
            raise unauthorized("the external account binding's key id is bound to another account already")
        return credential

    async def account(self, request: web.Request) -> web.StreamResponse:
        checked = await self._checked(request, own_key=False)
        assert checked.account is not None
        if checked.account["account_id"] != request.match_info["account_id"]:
            raise unauthorized("an account may only read or change itself")
        body = checked.payload
        if body is None:
            return self._account_response(checked.account, 200)
        status = body.get("status")
        if status is not None and status != "deactivated":
            raise malformed("an account's status may only be changed to deactivated")
        contact = self._contacts(body["contact"]) if "contact" in body else None
        async with self._pool().acquire() as conn:
            row = await store.update_account(
                conn, checked.account["account_id"], self.clock.now(), contact=contact, deactivate=status is not None
            )
        if status is not None:
            log.info("ACME account deactivated", extra={"account": row["account_id"]})
        return self._account_response(row, 200)

    async def key_change(self, request: web.Request) -> web.StreamResponse:
        """RFC 8555 §7.3.5: the outer JWS signed by the account's key, its payload a JWS signed by the
        new key naming the account and the old key; the account is then bound to the new key."""
        checked = await self._checked(request, own_key=False)
        account = checked.account
        assert account is not None
        inner = jws.parse_inner(checked.payload)
        assert inner.jwk is not None  # parse_inner insists on it
        payload = jws.payload_object(inner.verify(inner.jwk))
        if inner.url != self.config.url(request.path):
            raise malformed("the inner JWS's url is not the key change URL")
        url = self.config.url(f"/acme/acct/{account['account_id']}")
        if payload is None or payload.get("account") != url:
            raise malformed("the inner payload's account is not the account the request is signed for")
        old = payload.get("oldKey")
        if not isinstance(old, dict) or jws.thumbprint(old) != account["thumbprint"]:
            raise malformed("the inner payload's oldKey is not the account's current key")
        new_thumbprint = jws.thumbprint(inner.jwk)
        if new_thumbprint == account["thumbprint"]:
            raise malformed("the new key is the account's current key")
        async with self._pool().acquire() as conn:
            taken = await store.change_key(
                conn, account["account_id"], account["thumbprint"], new_thumbprint, inner.jwk, self.clock.now()
            )
            row = await store.account(conn, account["account_id"])
        if taken is not None:
            other = self.config.url(f"/acme/acct/{taken['account_id']}")
            return AcmeProblem("malformed", "the new key is another account's", 409).response({"Location": other})
        assert row is not None
        if row["thumbprint"] != new_thumbprint:
            raise AcmeProblem("malformed", "the account's key was changed meanwhile", 409)
        log.info("ACME account key changed", extra={"account": row["account_id"], "thumbprint": new_thumbprint})
        return self._account_response(row, 200)

    async def orders(self, request: web.Request) -> web.StreamResponse:
        checked = await self._checked(request, own_key=False)
        assert checked.account is not None
        if checked.account["account_id"] != request.match_info["account_id"]:
            raise unauthorized("an account may only list its own orders")
        async with self._pool().acquire() as conn:
            ids = await store.order_ids(conn, checked.account["account_id"], self.config.max_orders_listed)
        # The newest max_orders_listed; older ones stay readable at their URLs.
        return web.json_response({"orders": [self.config.url(f"/acme/order/{i}") for i in ids]})

    async def new_order(self, request: web.Request) -> web.StreamResponse:
        checked = await self._checked(request, own_key=False)
        assert checked.account is not None
        body = checked.payload
        if body is None:
            raise malformed("newOrder needs a payload with identifiers")
        if "notBefore" in body or "notAfter" in body:
            raise malformed("notBefore and notAfter are not accepted: the certificate's profile sets its validity")
        names = self._names(body.get("identifiers"))
        wanted = lifecycle.parse_cert_id(body["replaces"]) if "replaces" in body else None
        now = self.clock.now()
        limit = self.config.orders_per_hour
        account_id = checked.account["account_id"]
        async with self._pool().acquire() as conn:
            async with conn.transaction():
                if limit:
                    count, oldest = await store.orders_since(conn, account_id, now - HOUR)
                    if count >= limit:
                        raise _rate_limited(f"{count} orders in the last hour; at most {limit}", oldest, now)
                if wanted is not None:
                    replaces: str | None = await self._replaceable(conn, account_id, wanted, names, now)
                else:
                    replaces = await self._renews(conn, account_id, names, now)
                order_id = await store.create_order(
                    conn, account_id, names, self._challenge_types, now, now + self.config.order_ttl
                )
                if replaces is not None:
                    await store.set_replaces(conn, order_id, replaces)
            response = await self._order_response(conn, order_id, 201)
        log.info("ACME order created", extra={"account": account_id, "order": order_id, "replaces": replaces})
        return response

    async def _replaceable(
        self, conn: asyncpg.Connection, account_id: str, wanted: lifecycle.CertId, names: list[str], now: datetime
    ) -> str:
        """The serial of the certificate ARI's `replaces` names (RFC 9773 §5): one this account
        ordered, sharing a name with the new order, and not replaced by another order already."""
        row = await store.order_by_serial(conn, wanted.serial)
        if row is None or row["account_id"] != account_id:
            raise unauthorized("replaces names no certificate this account ordered")
        if not wanted.names(x509.load_pem_x509_certificate(row["cert_chain"].encode())):
            raise malformed("replaces names the certificate's serial but not its issuer's key identifier")
        if not {i["value"] for i in row["identifiers"]} & set(names):
            raise malformed("the order shares no identifier with the certificate it replaces")
        other = await store.replacing_order(conn, wanted.serial, now)
        if other is not None:
            raise AcmeProblem(
                "alreadyReplaced", f"order {self.config.url('/acme/order/' + other)} replaces that certificate", 409
            )
        return wanted.serial

    async def _renews(self, conn: asyncpg.Connection, account_id: str, names: list[str], now: datetime) -> str | None:
        """A client that does not speak ARI renews by ordering the same names again: the serial of
        the account's newest unexpired certificate for exactly these names not replaced yet."""
        for row in await store.renewable_for(conn, account_id, names, now):
            if x509.load_pem_x509_certificate(row["cert_chain"].encode()).not_valid_after_utc > now:
                serial: str = row["serial"]
                return serial
        return None

    async def order(self, request: web.Request) -> web.StreamResponse:
        checked = await self._checked(request, own_key=False)
        async with self._pool().acquire() as conn:
            row = await self._own_order(conn, checked, request.match_info["order_id"])
            return self._order_json(await self._order_object(conn, row), row["order_id"], 200)

    async def finalize(self, request: web.Request) -> web.StreamResponse:
        checked = await self._checked(request, own_key=False)
        assert checked.account is not None
        order_id = request.match_info["order_id"]
        async with self._pool().acquire() as conn:
            row = await self._own_order(conn, checked, order_id)
            status = (await self._order_object(conn, row))["status"]
        if status != "ready":
            raise AcmeProblem("orderNotReady", f"the order is {status}, not ready", 403)
        finalizer = self.config.finalizer
        if finalizer is None:
            raise AcmeProblem("serverInternal", "this ACME server is configured without a way to finalize", 501)
        names = [i["value"] for i in row["identifiers"]]
        csr = self._csr(checked.payload, names, checked.jwk)
        account = checked.account
        enrollment = finalizer.prepare(
            csr,
            names,
            f"acme:{account['account_id']}:{order_id}",
            provisioner_id=account["provisioner_id"],
            profile=account["profile"],
            replaces=row["replaces"],
        )
        async with self._pool().acquire() as conn:
            began = await store.begin_finalize(
                conn, order_id, enrollment.aggregate_id, enrollment.model_dump(mode="json"), self.clock.now()
            )
            if not began:
                raise AcmeProblem("orderNotReady", "the order was finalized already", 403)
            self._start_finalize(order_id, enrollment)
            response = await self._order_response(conn, order_id, 200)
        response.headers["Retry-After"] = "1"
        log.info(
            "ACME order finalized: enrollment requested",
            extra={"order": order_id, "request": enrollment.aggregate_id, "names": names},
        )
        return response

    def _csr(
        self, payload: dict[str, Any] | None, names: list[str], account_jwk: dict[str, Any]
    ) -> x509.CertificateSigningRequest:
        """The finalize payload's CSR, if it asks for exactly the order's names with a key that is not
        the account's (enrollment then judges it against the profile)."""
        if payload is None or not isinstance(payload.get("csr"), str):
            raise malformed("finalize needs a payload with csr (base64url DER)")
        text = payload["csr"]
        if len(text) > jws.MAX_BODY_BYTES or "=" in text:
            raise AcmeProblem("badCSR", "csr must be unpadded base64url DER")
        try:
            csr = x509.load_der_x509_csr(base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True))
        except (ValueError, binascii.Error) as e:
            raise AcmeProblem("badCSR", f"csr cannot be read: {e}") from None
        if not csr.is_signature_valid:
            raise AcmeProblem("badCSR", "the CSR's signature does not verify")
        try:
            sans = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            requested = [n.lower() for n in sans.get_values_for_type(x509.DNSName)]
            other = len(list(sans)) - len(requested)
        except x509.ExtensionNotFound:
            requested, other = [], 0
        except (ValueError, x509.DuplicateExtension) as e:
            raise AcmeProblem("badCSR", f"the CSR's extensions cannot be read: {e}") from None
        common = [str(a.value).lower() for a in csr.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]
        if other:
            raise AcmeProblem("badCSR", "the CSR asks for names other than DNS names")
        if any(c not in requested for c in common):
            raise AcmeProblem("badCSR", f"the CSR's common name {common} is not among its DNS names")
        if sorted(set(requested)) != sorted(names):
            raise AcmeProblem("badCSR", f"the CSR asks for {sorted(set(requested))}; the order is for {names}")
        account_key = jws.account_key(account_jwk)
        spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        if csr.public_key().public_bytes(*spki) == account_key.public_bytes(*spki):
            raise AcmeProblem("badCSR", "the certificate's key must not be the account's key")
        return csr

    def _start_finalize(self, order_id: str, enrollment: EnrollmentRequested) -> None:
        if order_id in self._finalizing:
            return
        task = asyncio.create_task(self._finalize(order_id, enrollment), name=f"acme-finalize-{order_id}")
        self._finalizing[order_id] = task
        task.add_done_callback(lambda t: self._finalized(order_id, t))

    def _finalized(self, order_id: str, task: asyncio.Task[None]) -> None:
        self._finalizing.pop(order_id, None)
        if not task.cancelled() and (e := task.exception()) is not None:
            log.error(
                "ACME finalize failed; the next sweep tries again", extra={"order": order_id, "error": repr(e)[:300]}
            )

    async def _finalize(self, order_id: str, enrollment: EnrollmentRequested) -> None:
        finalizer = self.config.finalizer
        assert finalizer is not None
        try:
            issued = await finalizer.submit(enrollment)
        except AcmeProblem as problem:
            async with self._pool().acquire() as conn:
                await store.finish_finalize(conn, order_id, error=problem.document())
            log.info("ACME order refused", extra={"order": order_id, "error": problem.detail})
            return
        except StillPending as e:
            log.info("ACME order waits for an operator's approval", extra={"order": order_id, "detail": str(e)})
            return
        except (Unreachable, OSError, TimeoutError) as e:  # the next sweep submits it again
            log.warning("ACME order not finalized yet", extra={"order": order_id, "error": repr(e)[:300]})
            return
        async with self._pool().acquire() as conn:
            await store.finish_finalize(conn, order_id, serial=issued.serial, cert_chain=issued.cert_chain)
        log.info("ACME order valid", extra={"order": order_id, "serial": issued.serial})

    async def sweep(self, limit: int = 100) -> int:
        """Submit again the orders left processing (a stopped replica, an unreachable bus, an approval
        awaited): the same request, which enrollment follows rather than takes twice. How many."""
        async with self._pool().acquire() as conn:
            rows = await store.processing_orders(conn, self.clock.now() - self.config.finalize_retry, limit)
        started = 0
        for row in rows:
            if row["order_id"] not in self._finalizing:
                self._start_finalize(row["order_id"], EnrollmentRequested.model_validate(row["request"]))
                started += 1
        return started

    async def certificate(self, request: web.Request) -> web.StreamResponse:
        checked = await self._checked(request, own_key=False)
        async with self._pool().acquire() as conn:
            row = await self._own_order(conn, checked, request.match_info["order_id"])
        if row["finalize_status"] != "valid":
            raise AcmeProblem("malformed", "the order has no certificate (yet)", 404)
        return web.Response(text=row["cert_chain"], content_type="application/pem-certificate-chain")

    async def revoke_cert(self, request: web.Request) -> web.StreamResponse:
        """RFC 8555 §7.6: signed by the account that ordered the certificate, or with the
        certificate's key (then the JWS itself is the proof revocation checks)."""
        checked = await self._checked(request, own_key=None)
        revoker = self.config.revoker
        if revoker is None:
            raise AcmeProblem("serverInternal", "this ACME server is configured without a way to revoke", 501)
        body = checked.payload or {}
        cert = _certificate_of(body.get("certificate"))
        code = body.get("reason", 0)
        reason = REASON_CODES.get(code) if isinstance(code, int) and not isinstance(code, bool) else None
        if reason is None or reason == "cACompromise":
            allowed = ", ".join(f"{c} ({n})" for c, n in REASON_CODES.items() if n != "cACompromise")
            raise AcmeProblem("badRevocationReason", f"reason {str(code)[:16]} is not one of {allowed}")
        serial = normalise_serial(f"{cert.serial_number:x}")
        proof: str | None = None
        if checked.account is None:  # signed with a key: it must be the certificate's
            spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            if jws.account_key(checked.jwk).public_bytes(*spki) != cert.public_key().public_bytes(*spki):
                raise unauthorized("the request is signed neither by an account nor with the certificate's key")
            proof = checked.compact
        else:
            async with self._pool().acquire() as conn:
                row = await store.order_by_serial(conn, serial)
            if row is None or row["account_id"] != checked.account["account_id"]:
                raise unauthorized(
                    "this account did not order that certificate: sign the request with the certificate's key"
                )
            if reason == "keyCompromise":
                raise AcmeProblem(
                    "badRevocationReason",
                    "keyCompromise must be asked with the certificate's key (a JWS signed with it, `jwk` in its "
                    "header), which proves the key is in other hands",
                )
        await revoker.revoke(serial, reason, proof)
        log.info(
            "ACME revocation",
            extra={"serial": serial, "reason": reason, "by": "certificate key" if proof else "account"},
        )
        return web.Response(status=200)

    async def renewal_info(self, request: web.Request) -> web.StreamResponse:
        """RFC 9773 §4: the window in which to renew a certificate ACME issued (unauthenticated GET)."""
        revoker = self.config.revoker
        if revoker is None:
            raise AcmeProblem("malformed", "renewal information is not served", 404)
        wanted = lifecycle.parse_cert_id(request.match_info["cert_id"])
        async with self._pool().acquire() as conn:
            row = await store.order_by_serial(conn, wanted.serial)
        cert = x509.load_pem_x509_certificate(row["cert_chain"].encode()) if row is not None else None
        if cert is None or not wanted.names(cert):
            raise AcmeProblem("malformed", "no certificate issued here has that id", 404)
        assert row is not None
        profile = (row["request"] or {}).get("profile")
        renewal: lifecycle.Renewal | None
        try:
            renewal = await revoker.renewal(wanted.serial, profile if isinstance(profile, str) else None)
        except (Unreachable, OSError, TimeoutError) as e:  # the default schedule's window still holds
            log.warning("ACME renewal info without the certificate's status", extra={"error": repr(e)[:300]})
            renewal = None
        start, end = lifecycle.window(cert, renewal, self.clock.now())
        retry = int(self.config.renewal_info_retry.total_seconds()) if renewal is not None else 60
        return web.json_response(
            {"suggestedWindow": {"start": _time(start), "end": _time(end)}}, headers={"Retry-After": str(retry)}
        )

    async def authorization(self, request: web.Request) -> web.StreamResponse:
        checked = await self._checked(request, own_key=False)
        assert checked.account is not None
        authz_id = request.match_info["authz_id"]
        async with self._pool().acquire() as conn:
            _mine(await store.authorization(conn, authz_id), checked, "authorization")
            if checked.payload is not None:
                if checked.payload != {"status": "deactivated"}:
                    raise malformed('an authorization may only be updated with {"status": "deactivated"}')
                await store.deactivate_authorization(conn, authz_id)
            return web.json_response(await self._authz_object(conn, authz_id))

    async def challenge(self, request: web.Request) -> web.StreamResponse:
        checked = await self._checked(request, own_key=False)
        assert checked.account is not None
        challenge_id = request.match_info["challenge_id"]
        async with self._pool().acquire() as conn:
            row = _mine(await store.challenge(conn, challenge_id), checked, "challenge")
            if checked.payload is not None:  # {} asks the server to validate (RFC 8555 §7.5.1)
                now, limit = self.clock.now(), self.config.failed_validations_per_hour
                if limit and row["status"] == "pending":
                    failed, oldest = await store.failed_validations_since(
                        conn, row["account_id"], row["name"], now - HOUR
                    )
                    if failed >= limit:
                        raise _rate_limited(
                            f"{failed} failed validations of {row['name']} by this account in the last hour; at most "
                            f"{limit}: fix what the last failure says, then try again",
                            oldest,
                            now,
                        )
                if await store.start_validation(conn, challenge_id, now, self.config.stale_validation):
                    task = asyncio.create_task(
                        self._validate(challenge_id, row["type"], row["name"], row["token"], checked.jwk),
                        name=f"acme-validate-{challenge_id}",
                    )
                    self._validations.add(task)
                    task.add_done_callback(self._validations.discard)
                row = await store.challenge(conn, challenge_id)
                assert row is not None
        return web.json_response(
            self._challenge_object(row),
            headers={"Link": f'<{self.config.url("/acme/authz/" + row["authz_id"])}>;rel="up"'},
        )

    async def _validate(self, challenge_id: str, kind: str, name: str, token: str, jwk: dict[str, Any]) -> None:
        error: dict[str, Any] | None = None
        try:
            await self.config.validator.validate(kind, name, token, jws.thumbprint(jwk))
        except AcmeProblem as problem:
            error = problem.document()
        except TimeoutError:
            error = AcmeProblem("connection", f"{kind} validation of {name} timed out").document()
        async with self._pool().acquire() as conn:
            await store.finish_validation(conn, challenge_id, self.clock.now(), error)
        log.info(
            "ACME challenge validated" if error is None else "ACME challenge failed",
            extra={"challenge": challenge_id, "type": kind, "name": name, "error": error and error["detail"]},
        )

    # -- helpers -------------------------------------------------------------------------------------

    def _names(self, identifiers: object) -> list[str]:
        """The order's DNS names, checked (every refused identifier is listed as a subproblem)."""
        if not isinstance(identifiers, list) or not identifiers:
            raise malformed("identifiers must be a non-empty list")
        if len(identifiers) > self.config.max_identifiers:
            raise malformed(f"{len(identifiers)} identifiers; at most {self.config.max_identifiers}")
        names: list[str] = []
        subproblems: list[dict[str, Any]] = []
        for identifier in identifiers:
            if not isinstance(identifier, dict) or set(identifier) != {"type", "value"}:
                raise malformed("each identifier must be an object with exactly type and value")
            kind, value = identifier["type"], identifier["value"]
            if not isinstance(kind, str) or not isinstance(value, str):
                raise malformed("an identifier's type and value must be strings")
            shown = {"type": kind[:16], "value": value[:256]}
            if kind != "dns":
                subproblems.append(_sub("unsupportedIdentifier", f"identifier type {kind[:16]!r} is not served", shown))
            elif (problem := self._dns_name_problem(value)) is not None:
                subproblems.append(_sub("rejectedIdentifier", problem, shown))
            else:
                names.append(value)
        if subproblems:
            kind = subproblems[0]["type"].removeprefix("urn:ietf:params:acme:error:")
            same = all(p["type"] == subproblems[0]["type"] for p in subproblems)
            raise AcmeProblem(
                kind if same else "compound",
                f"{len(subproblems)} of the order's identifiers cannot be ordered",
                subproblems=subproblems,
            )
        return sorted(set(names))

    def _dns_name_problem(self, value: str) -> str | None:
        """Why a dns identifier cannot be ordered, or None; a wildcard `*.base` may be (RFC 8555
        §7.1.3), validated for its base by dns-01 alone; whether its certificate may be issued is
        the profile's to say (`allow_wildcards`), as for every name."""
        if not value.startswith("*."):
            return dns_syntax_problem(value)
        base = value[2:]
        if not self._challenge_types(value):
            return f"wildcard names need {' or '.join(WILDCARD_TYPES)}, which this server does not offer"
        if (problem := dns_syntax_problem(base)) is not None:
            return f"wildcard {value!r}: {problem}"
        if "." not in base:
            return f"wildcard {value!r} must be under a domain of at least two labels"
        return None

    def _challenge_types(self, name: str) -> tuple[str, ...]:
        """The challenges an authorization for `name` offers: for a wildcard, those that prove control
        of the whole zone (dns-01, RFC 8555 §7.1.4), for any other name every type served."""
        if name.startswith("*."):
            return tuple(t for t in self.config.challenge_types if t in WILDCARD_TYPES)
        return self.config.challenge_types

    async def _own_order(self, conn: asyncpg.Connection, checked: Request, order_id: str) -> asyncpg.Record:
        return _mine(await store.order(conn, order_id), checked, "order")

    async def _order_object(self, conn: asyncpg.Connection, row: asyncpg.Record) -> dict[str, Any]:
        order_id = row["order_id"]
        authzs = await store.authorizations_of(conn, order_id)
        statuses = {a["status"] for a in authzs}
        if row["finalize_status"] is not None:
            status = row["finalize_status"]
        elif statuses & {"invalid", "deactivated"} or self.clock.now() >= row["expires_at"]:
            status = "invalid"
        elif statuses == {"valid"}:
            status = "ready"
        else:
            status = "pending"
        body: dict[str, Any] = {
            "status": status,
            "expires": _time(row["expires_at"]),
            "identifiers": row["identifiers"],
            "authorizations": [self.config.url(f"/acme/authz/{a['authz_id']}") for a in authzs],
            "finalize": self.config.url(f"/acme/order/{order_id}/finalize"),
        }
        if status == "valid":
            body["certificate"] = self.config.url(f"/acme/cert/{order_id}")
        if row["error"] is not None:
            body["error"] = row["error"]
        return body

    async def _order_response(self, conn: asyncpg.Connection, order_id: str, status: int) -> web.Response:
        row = await store.order(conn, order_id)
        assert row is not None
        return self._order_json(await self._order_object(conn, row), order_id, status)

    def _order_json(self, body: dict[str, Any], order_id: str, status: int) -> web.Response:
        return web.json_response(body, status=status, headers={"Location": self.config.url(f"/acme/order/{order_id}")})

    async def _authz_object(self, conn: asyncpg.Connection, authz_id: str) -> dict[str, Any]:
        row = await store.authorization(conn, authz_id)
        assert row is not None
        status = row["status"]
        if status == "pending" and self.clock.now() >= row["expires_at"]:
            status = "expired"
        body: dict[str, Any] = {
            "identifier": {"type": "dns", "value": row["name"]},
            "status": status,
            "expires": _time(row["expires_at"]),
            "challenges": [self._challenge_object(c) for c in await store.challenges_of(conn, authz_id)],
        }
        if row["wildcard"]:  # present and true for a wildcard's authorization, absent otherwise (§7.1.4)
            body["wildcard"] = True
        return body

    def _challenge_object(self, row: asyncpg.Record) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": row["type"],
            "url": self.config.url(f"/acme/chall/{row['challenge_id']}"),
            "token": row["token"],
            "status": row["status"],
        }
        if row["validated_at"] is not None:
            body["validated"] = _time(row["validated_at"])
        if row["error"] is not None:
            body["error"] = row["error"]
        return body

    def _account_response(self, row: asyncpg.Record, status: int) -> web.Response:
        url = self.config.url(f"/acme/acct/{row['account_id']}")
        body = {"status": row["status"], "contact": list(row["contact"]), "orders": url + "/orders"}
        return web.json_response(body, status=status, headers={"Location": url})

    def _contacts(self, value: object) -> list[str]:
        """Contacts as RFC 8555 §7.3 allows them: mailto: URLs of one address each, a few at most."""
        if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
            raise malformed("contact must be a list of URLs")
        if len(value) > self.config.max_contacts:
            raise malformed(f"{len(value)} contacts; at most {self.config.max_contacts}")
        for contact in value:
            if not contact.startswith("mailto:"):
                raise AcmeProblem("unsupportedContact", f"contact {contact[:64]!r} is not a mailto: URL")
            address = contact.removeprefix("mailto:")
            local, _, domain = address.partition("@")
            if (
                len(contact) > MAX_CONTACT_CHARS
                or not local
                or not domain
                or any(c in address for c in ",?&%<> \t\r\n")
                or "@" in domain
            ):
                raise AcmeProblem("invalidContact", f"contact {contact[:64]!r} is not one plain email address")
        return list(value)


def _time(at: datetime) -> str:
    """RFC 3339 in UTC, as ACME objects carry times."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _rate_limited(detail: str, oldest: datetime | None, now: datetime) -> AcmeProblem:
    """A `rateLimited` problem whose Retry-After is when the oldest counted event leaves the hour."""
    wait = max(1, int(((oldest + HOUR) - now).total_seconds()) + 1) if oldest is not None else 60
    return AcmeProblem("rateLimited", detail, 429, retry_after=wait)


def _certificate_of(value: object) -> x509.Certificate:
    """revokeCert's certificate (base64url DER)."""
    if not isinstance(value, str) or len(value) > jws.MAX_BODY_BYTES:
        raise malformed("revokeCert needs a payload with certificate (base64url DER)")
    try:
        return x509.load_der_x509_certificate(lifecycle.unb64url(value))
    except (ValueError, binascii.Error):
        raise malformed("certificate is not base64url DER of a certificate") from None


def _sub(kind: str, detail: str, identifier: dict[str, str]) -> dict[str, Any]:
    return {"type": f"urn:ietf:params:acme:error:{kind}", "detail": detail, "identifier": identifier}


def _mine(row: asyncpg.Record | None, checked: Request, what: str) -> asyncpg.Record:
    """An object of the requesting account; another account's is answered as if it did not exist."""
    assert checked.account is not None
    if row is None or row["account_id"] != checked.account["account_id"]:
        raise AcmeProblem("malformed", f"no such {what} of this account", 404)
    return row
