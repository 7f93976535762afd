"""ACME's HTTP resources (RFC 8555 §7): the directory, nonces and accounts.

Every POST is a JWS checked by `jws` before anything else: its signature (with the key it carries,
for newAccount, or the key of the account its `kid` names), the URL it says it was sent to against
the URL it reached, then its nonce, spent once at any replica (nonces live in PostgreSQL). Every
response carries a fresh nonce and a link to the directory; every refusal is a problem document.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import asyncpg
from aiohttp import web

from services.acme import jws, store
from services.acme.problems import AcmeProblem, malformed, unauthorized
from shared.base.clock import Clock, SystemClock

log = logging.getLogger("certbus.acme")
JOSE_JSON = "application/jose+json"
MAX_CONTACT_CHARS = 320


@dataclass(frozen=True)
class AcmeConfig:
    """Where clients reach the server (its URLs are built from `base_url`) and its account policy."""

    base_url: str
    nonce_ttl: timedelta = timedelta(minutes=10)
    terms_of_service: str | None = None
    max_contacts: int = 4

    def url(self, path: str) -> str:
        return self.base_url.rstrip("/") + path


@dataclass(frozen=True)
class Request:
    """A POST that passed the JWS checks: its payload (None for POST-as-GET) and who signed it."""

    payload: dict[str, Any] | None
    jwk: dict[str, Any]
    account: asyncpg.Record | None  # None for a request signed with its own key (newAccount)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Acme:
    """The resources, over a pool on schema `acme`."""

    def __init__(self, pool: Callable[[], asyncpg.Pool], config: AcmeConfig, clock: Clock | None = None) -> None:
        self._pool = pool
        self.config = config
        self.clock = clock or SystemClock()

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/acme/directory", self._answer(self.directory)),
            web.head("/acme/new-nonce", self._answer(self.new_nonce)),
            web.get("/acme/new-nonce", self._answer(self.new_nonce), allow_head=False),
            web.post("/acme/new-account", self._answer(self.new_account)),
            web.post("/acme/acct/{account_id}", self._answer(self.account)),
            web.post("/acme/acct/{account_id}/orders", self._answer(self.orders)),
        ]

    def application(self) -> web.Application:
        app = web.Application(client_max_size=jws.MAX_BODY_BYTES)
        app.add_routes(self.routes())
        return app

    def _answer(self, handler: Handler) -> Handler:
        """Every answer, success or problem, with a fresh nonce and the directory's link."""

        async def answer(request: web.Request) -> web.StreamResponse:
            try:
                response = await handler(request)
            except AcmeProblem as problem:
                response = problem.response()
            response.headers["Replay-Nonce"] = await self._nonce()
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

    async def _checked(self, request: web.Request, *, own_key: bool) -> Request:
        if request.content_type != JOSE_JSON:
            raise AcmeProblem("malformed", f"Content-Type must be {JOSE_JSON}", 415)
        envelope = jws.parse(await request.read())
        account: asyncpg.Record | None = None
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
        return Request(jws.payload_object(payload), jwk, account)

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
        # Only what is served so far is listed: newOrder, revokeCert and keyChange come with orders.
        meta: dict[str, Any] = {"externalAccountRequired": False}
        if self.config.terms_of_service:
            meta["termsOfService"] = self.config.terms_of_service
        return web.json_response(
            {
                "newNonce": self.config.url("/acme/new-nonce"),
                "newAccount": self.config.url("/acme/new-account"),
                "meta": meta,
            }
        )

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
            row, created = await store.create_account(conn, thumbprint, checked.jwk, contact, agreed, now)
        if created:
            log.info("ACME account created", extra={"account": row["account_id"], "thumbprint": thumbprint})
        return self._account_response(row, 201 if created else 200)

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

    async def orders(self, request: web.Request) -> web.StreamResponse:
        checked = await self._checked(request, own_key=False)
        assert checked.account is not None
        if checked.account["account_id"] != request.match_info["account_id"]:
            raise unauthorized("an account may only list its own orders")
        return web.json_response({"orders": []})  # orders are not served yet: no account has any

    # -- helpers -------------------------------------------------------------------------------------

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
