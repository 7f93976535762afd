"""A consumer's table of projections is the one list of what it consumes."""

from __future__ import annotations

import typing
from datetime import UTC, datetime
from typing import Any

import pytest

from pki_builders import NOW
from services.validation.app import build as validation
from shared.base.settings import ValidationSettings
from shared.contract.events import (
    CaCompromised,
    CertificateExpired,
    CertificateIssued,
    CrlPublished,
    Event,
    OperatorRegistered,
    OperatorRemoved,
    QuorumSet,
)
from shared.runtime.consumer import Delivery, EventRejected, dispatching
from shared.runtime.service import _message_type, _with_registry


def test_a_consumer_of_operator_commands_also_reads_the_operators_registry_first() -> None:
    assert _with_registry([CertificateIssued, CaCompromised]) == (
        OperatorRegistered,
        OperatorRemoved,
        QuorumSet,
        CertificateIssued,
        CaCompromised,
    )


def test_a_consumer_of_no_operator_command_reads_only_its_own_types() -> None:
    assert _with_registry([CertificateIssued, CertificateExpired]) == (CertificateIssued, CertificateExpired)


def test_one_type_is_parsed_as_itself_and_several_as_their_union() -> None:
    assert _message_type((CertificateIssued,), tagged=True) is CertificateIssued
    assert typing.get_args(_message_type((CertificateIssued, CrlPublished), tagged=False)) == (
        CertificateIssued,
        CrlPublished,
    )
    tagged = _message_type((CertificateIssued, CrlPublished), tagged=True)
    assert typing.get_origin(tagged) is typing.Annotated


def test_the_subject_filters_come_from_the_table(tmp_path: Any) -> None:
    settings = ValidationSettings(
        ocsp_key_dir=tmp_path / "ocsp", ocsp_provisioner_key_file=tmp_path / "ocsp-provisioner.key.pem"
    )
    _, rt = validation(settings)
    assert rt.consumers["validation-status"] == [
        "pki.operator.*.registered",
        "pki.operator.*.removed",
        "pki.quorum.*.set",
        "pki.cert.*.issued",
        "pki.cert.*.revoked",
        "pki.ca.*.created",
        "pki.ca.*.crl_published",
        "pki.ca.*.compromised",
        "pki.cert.*.superseded",
        "pki.cert.*.expired",
        "pki.cert.*.destroyed",
    ]


async def test_dispatching_applies_the_projection_of_the_events_type() -> None:
    seen: list[Event] = []

    async def project(conn: Any, event: Event, delivery: Delivery) -> None:
        seen.append(event)

    apply = dispatching("validation", {CaCompromised: project})
    event = CaCompromised(
        aggregate_id="ca-1",
        occurred_at=NOW,
        correlation_id="c",
        producer="operator",
        ca_id="ca-1",
        declared_by="op",
        reason="r",
    )
    await apply(None, event, Delivery(1, datetime.now(UTC)))  # type: ignore[arg-type]
    assert seen == [event]
    other = CertificateExpired(
        aggregate_id="cert-1",
        occurred_at=NOW,
        correlation_id="c",
        producer="enrollment",
        serial="01",
        issuer_id="ca-1",
        not_after=NOW,
    )
    with pytest.raises(EventRejected, match="validation does not consume CertificateExpired"):
        await apply(None, other, Delivery(2, datetime.now(UTC)))  # type: ignore[arg-type]
