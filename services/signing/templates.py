"""Linted certificate templates: one per profile version, issuing CA and key type.

pkilint costs about 7 ms per certificate, ten times the budget of one issuance, so it runs on
templates: when a profile is applied, when signing starts, and when an issuing CA first signs
for a profile. A template is signed by the real issuing CA, with a placeholder name and key of
the right type. A profile is usable only if every one of its templates is free of lint errors,
and each certificate is then checked against its template before release
(`domain.template_deviations`), which costs tens of microseconds.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from services.signing import domain
from services.signing.cas import CaRegistry
from shared.contract.events import LintResult
from shared.contract.profiles import Profile, ProfileKeyType
from shared.pki.crypto import PublicKey, generate_key, signing_hash
from shared.pki.lint import errors, lint_certificate

log = logging.getLogger("certbus.signing.templates")
_TEMPLATE_KEY_TYPES = {"ec-p256": "ec-p256", "ec-p384": "ec-p384", "rsa": "rsa-2048", "ed25519": "ed25519"}


@functools.cache
def template_key(key_type: ProfileKeyType) -> PublicKey:
    """A placeholder public key of `key_type`, made once per process (its private half is dropped)."""
    return generate_key(_TEMPLATE_KEY_TYPES[key_type]).public_key()  # type: ignore[arg-type]


@dataclass(frozen=True)
class Template:
    """A signed, linted template certificate."""

    digest: str
    issuer_id: str
    key_type: ProfileKeyType
    cert: x509.Certificate
    findings: tuple[LintResult, ...]

    @property
    def usable(self) -> bool:
        """Whether pkilint found no error in it."""
        return not any(f.severity in ("ERROR", "FATAL") for f in self.findings)


@dataclass(frozen=True)
class Verdict:
    """The lint verdict on one profile version under one issuing CA."""

    digest: str
    issuer_id: str
    usable: bool
    findings: tuple[LintResult, ...]


class TemplateBook:
    """The profiles signing knows (by digest) and their linted templates."""

    def __init__(self, cas: CaRegistry) -> None:
        self._cas = cas
        self.profiles: dict[str, Profile] = {}
        self._templates: dict[tuple[str, str, ProfileKeyType], Template] = {}
        self._verdicts: dict[tuple[str, str], Verdict] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    def add(self, profile: Profile) -> str:
        """Know a profile version; returns its digest."""
        digest = profile.digest()
        self.profiles[digest] = profile
        return digest

    def template(self, digest: str, issuer_id: str, key_type: ProfileKeyType) -> Template | None:
        """The linted template for one profile version, issuer and key type (None if not linted)."""
        return self._templates.get((digest, issuer_id, key_type))

    def verdict(self, digest: str, issuer_id: str) -> Verdict | None:
        """The lint verdict on a profile version under an issuer, if it was linted in this process."""
        return self._verdicts.get((digest, issuer_id))

    async def lint(self, digest: str, issuer_id: str, now: datetime) -> Verdict:
        """Build and lint every template of a profile version under `issuer_id` (once per process)."""
        key = (digest, issuer_id)
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            if (done := self._verdicts.get(key)) is not None:
                return done
            profile = self.profiles[digest]
            templates = await asyncio.to_thread(self._build_and_lint, profile, digest, issuer_id, now)
            findings: list[LintResult] = []
            for template in templates:
                self._templates[(digest, issuer_id, template.key_type)] = template
                findings += template.findings
            verdict = Verdict(digest, issuer_id, all(t.usable for t in templates), tuple(findings))
            self._verdicts[key] = verdict
            log.log(
                logging.INFO if verdict.usable else logging.ERROR,
                "linted profile templates",
                extra={"profile": profile.name, "digest": digest[:12], "issuer": issuer_id, "usable": verdict.usable},
            )
            return verdict

    def _build_and_lint(self, profile: Profile, digest: str, issuer_id: str, now: datetime) -> list[Template]:
        issuer = self._cas.get(issuer_id)
        ca_key = self._cas.key(issuer_id)
        names = domain.Sans((profile.template_name(),))
        templates = []
        for key_type in profile.key_types:
            plan = domain.plan_leaf(issuer, profile.default_validity_days, now)
            cert = domain.leaf_builder(profile, names, template_key(key_type), issuer, plan, self._cas.urls).sign(
                ca_key, signing_hash(ca_key)
            )
            found = lint_certificate(cert.public_bytes(serialization.Encoding.DER))
            results = tuple(
                LintResult(severity=f.severity, code=f.code, message=f.message or f.path, key_type=key_type)
                for f in errors(found)
            )
            templates.append(Template(digest, issuer_id, key_type, cert, results))
        return templates
