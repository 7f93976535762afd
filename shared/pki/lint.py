"""RFC 5280 linting of X.509 certificates with pkilint's PKIX validators (the checks of `lint_pkix_cert lint`)."""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import Any

import validators  # type: ignore[import-untyped]
from pkilint import loader  # type: ignore[import-untyped]
from pkilint.pkix import certificate, extension, name  # type: ignore[import-untyped]

FAILING_SEVERITIES = frozenset({"FATAL", "ERROR"})
DECODE_FAILED = "certbus.decode_failed"


@dataclass(frozen=True)
class LintFinding:
    """One pkilint finding: severity name, finding code, optional message and the node path it concerns."""

    severity: str
    code: str
    message: str
    path: str


# Building the validator tree costs far more than linting one certificate, so it is built once per
# process. The validators keep no per-document state, so threads (asyncio.to_thread) can share them.
_validator: Any = None
_validator_lock = threading.Lock()


def _build_validator() -> Any:
    """The validator container `lint_pkix_cert lint` builds, with no extra validators."""
    return certificate.create_pkix_certificate_validator_container(
        certificate.create_decoding_validators(name.ATTRIBUTE_TYPE_MAPPINGS, extension.EXTENSION_MAPPINGS),
        [
            certificate.create_issuer_validator_container([]),
            certificate.create_validity_validator_container(),
            certificate.create_subject_validator_container([]),
            certificate.create_extensions_validator_container([]),
            certificate.create_spki_validator_container([]),
        ],
    )


def _shared_validator() -> Any:
    """The process-wide validator container, built on first use."""
    global _validator
    if _validator is None:
        with _validator_lock:
            if _validator is None:
                _validator = _build_validator()
    return _validator


def lint_certificate(der: bytes) -> list[LintFinding]:
    """Every finding pkilint reports for a DER certificate; one FATAL certbus.decode_failed if it cannot decode."""
    try:
        document: Any = loader.load_der_certificate(der, "certificate")
    except ValueError as e:
        return [LintFinding("FATAL", DECODE_FAILED, f"not a DER X.509 certificate: {e}", "certificate")]
    results: Any = _shared_validator().validate(document.root)
    findings = [
        LintFinding(
            severity=description.finding.severity.name,
            code=description.finding.code,
            message=description.message or "",
            path=result.node.path,
        )
        for result in results
        for description in result.finding_descriptions
    ]
    return [f for f in findings if not _wildcard_dns_name(f)]


_WILDCARD = re.compile(r'^Invalid domain name syntax: "\*\.([^"]+)"$')


def _wildcard_dns_name(finding: LintFinding) -> bool:
    """pkilint's PKIX linter applies RFC 5280's preferred name syntax, which has no wildcard; TLS
    (RFC 6125 6.4.3, and the CA/B Forum rules pkilint applies to public certificates) allows one
    whole leftmost "*" label. Such a name is accepted when the rest of it is valid; profiles decide
    whether wildcards may be issued at all."""
    match = _WILDCARD.match(finding.message) if finding.code == "pkix.invalid_domain_name_syntax" else None
    return match is not None and validators.domain(match[1]) is True


def errors(findings: list[LintFinding]) -> list[LintFinding]:
    """Only the ERROR and FATAL findings."""
    return [f for f in findings if f.severity in FAILING_SEVERITIES]
