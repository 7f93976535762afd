"""RFC 8555 §6.7 problem documents (RFC 7807): every refusal names its ACME error type."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

PROBLEM_JSON = "application/problem+json"
PREFIX = "urn:ietf:params:acme:error:"


class AcmeProblem(Exception):
    """A refusal: its ACME error type (without the URN prefix), what was wrong, and the HTTP status."""

    def __init__(self, kind: str, detail: str, status: int = 400, **extra: Any) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail
        self.status = status
        self.extra = extra

    def document(self) -> dict[str, Any]:
        extra = {k: v for k, v in self.extra.items() if k != "retry_after"}
        return {"type": PREFIX + self.kind, "detail": self.detail, "status": self.status, **extra}

    def response(self, headers: dict[str, str] | None = None) -> web.Response:
        headers = dict(headers or {})
        if "retry_after" in self.extra:
            headers["Retry-After"] = str(self.extra["retry_after"])
        return web.Response(
            status=self.status, text=json.dumps(self.document()), content_type=PROBLEM_JSON, headers=headers
        )


def malformed(detail: str) -> AcmeProblem:
    return AcmeProblem("malformed", detail)


def unauthorized(detail: str) -> AcmeProblem:
    return AcmeProblem("unauthorized", detail, 403)
