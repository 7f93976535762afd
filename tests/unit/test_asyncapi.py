"""docs/asyncapi.json is generated from the code and must not drift from it."""

from __future__ import annotations

from docs.asyncapi import OUTPUT, document, render


def test_the_committed_asyncapi_document_is_current() -> None:
    assert OUTPUT.read_text() == render(), "run `make docs` and commit docs/asyncapi.json"


def test_every_published_event_has_a_channel_with_its_schema() -> None:
    doc = document()
    for name in (
        "EnrollmentApproved",
        "EnrollmentRejected",
        "CertificateIssued",
        "CertificateRevoked",
        "RevocationRejected",
        "CaCreated",
        "CrlPublished",
    ):
        assert name in doc["channels"], name
        assert name in doc["components"]["schemas"], name
