"""The audit report: the inventory fold, its summary at a pinned time, and the CSV and HTML renderers."""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

from test_audit_samples import ROOT, rows
from typer.testing import CliRunner

from services.audit.report import TEXT_MAX, TOP, Inventory, inventory_of, summarise
from shared.client.cli.main import app
from shared.client.cli.report import report_csv
from shared.client.cli.report_html import render_html
from shared.contract.queries import Breakdown, ReportAnswer

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def _e(kind: str, producer: str, **fields: Any) -> bytes:
    return json.dumps({"event_type": kind, "producer": producer, **fields}, default=str).encode()


def _requested(request: str, requester: str) -> bytes:
    return _e("EnrollmentRequested", "requester", aggregate_id=request, requester=requester)


def _approved(request: str, requester: str) -> bytes:
    return _e("EnrollmentApproved", "enrollment", aggregate_id=request, requester=requester, profile="tls-server")


def _issued(
    request: str,
    serial: str,
    expires_in: timedelta = timedelta(days=200),
    issuer: str = "ca1",
    profile: str = "tls-server",
    issued: datetime = NOW - timedelta(days=10),
    names: list[str] | None = None,
) -> bytes:
    return _e(
        "CertificateIssued",
        "signing",
        aggregate_id=request,
        serial=serial,
        issuer_id=issuer,
        profile=profile,
        occurred_at=issued.isoformat(),
        not_before=issued.isoformat(),
        not_after=(NOW + expires_in).isoformat(),
        dns_names=names if names is not None else [f"{request}.corp.internal"],
    )


def _revoked(serial: str, reason: str, issuer: str = "ca1") -> bytes:
    return _e(
        "CertificateRevoked", "revocation", aggregate_id=f"c-{serial}", serial=serial, issuer_id=issuer, reason=reason
    )


def _fold(*raws: bytes) -> Inventory:
    """The inventory of `raws`, each on the subject its own type and aggregate id give."""
    return inventory_of(rows(*raws), ROOT)


def _counts(breakdown: Breakdown) -> dict[str, int]:
    return {t.key: t.count for t in breakdown.top}


def _report(*raws: bytes, days: int = 30, limit: int = 1000) -> ReportAnswer:
    return summarise(_fold(*raws), NOW, days, limit)


def test_each_certificate_is_in_the_state_it_has_at_the_time_of_the_report() -> None:
    report = _report(
        _issued("r1", "a1"),
        _issued("r2", "a2", expires_in=-timedelta(days=1)),
        _issued("r3", "a3"),
        _revoked("a3", "keyCompromise"),
        _issued("r4", "a4"),
        _e("CertificateSuperseded", "enrollment", aggregate_id="r4"),
        _issued("r5", "a5"),
        _revoked("a5", "superseded"),
        _e("CertificateDestroyed", "revocation", aggregate_id="x", issuer_id="ca1", serial="a5"),
    )
    assert _counts(report.by_state) == {"valid": 1, "expired": 1, "revoked": 1, "superseded": 1, "destroyed": 1}
    assert report.certificates == 5


def test_a_certificate_expired_and_revoked_counts_as_revoked() -> None:
    report = _report(_issued("r1", "a1", expires_in=-timedelta(days=3)), _revoked("a1", "cessationOfOperation"))
    assert _counts(report.by_state)["revoked"] == 1
    assert _counts(report.revoked_by_reason) == {"cessationOfOperation": 1}


def test_revocations_are_counted_by_reason_and_the_first_one_stands() -> None:
    report = _report(
        *(_issued(f"r{i}", f"a{i}") for i in range(4)),
        _revoked("a0", "keyCompromise"),
        _revoked("a1", "keyCompromise"),
        _revoked("a2", "superseded"),
        _revoked("a2", "keyCompromise"),
        _revoked("ff", "keyCompromise"),
    )
    assert _counts(report.revoked_by_reason) == {"keyCompromise": 2, "superseded": 1}
    assert report.ignored == 2  # a second revocation, and one of a serial never issued


def test_the_approvals_requester_outranks_the_requests_own_claim() -> None:
    report = _report(
        _requested("r1", "claimed"),
        _approved("r1", "billing-api"),
        _requested("r2", "ci"),
        _issued("r1", "a1"),
        _issued("r2", "a2"),
        _issued("r3", "a3"),
    )
    assert _counts(report.by_requester) == {"billing-api": 1, "ci": 1, "(unknown)": 1}


def test_counts_by_issuer_and_profile_are_largest_first() -> None:
    report = _report(
        _issued("r1", "a1", issuer="ca2", profile="service"),
        _issued("r2", "a2", issuer="ca1"),
        _issued("r3", "a3", issuer="ca2"),
    )
    assert [(t.key, t.count) for t in report.by_issuer.top] == [("ca2", 2), ("ca1", 1)]
    assert [(t.key, t.count) for t in report.by_profile.top] == [("tls-server", 2), ("service", 1)]


def test_the_same_serial_issued_again_does_not_count_twice_or_undo_a_revocation() -> None:
    report = _report(_issued("r1", "a1"), _revoked("a1", "keyCompromise"), _issued("r1", "a1"))
    assert (report.certificates, _counts(report.by_state)["revoked"], report.ignored) == (1, 1, 1)


def test_expiring_lists_valid_certificates_in_the_window_soonest_first() -> None:
    report = _report(
        _issued("late", "a1", expires_in=timedelta(days=20)),
        _issued("soon", "a2", expires_in=timedelta(days=2)),
        _issued("edge", "a3", expires_in=timedelta(days=30)),
        _issued("after", "a4", expires_in=timedelta(days=31)),
        _issued("gone", "a5", expires_in=timedelta(days=1)),
        _revoked("a5", "keyCompromise"),
        _issued("past", "a6", expires_in=-timedelta(hours=1)),
    )
    assert [c.serial for c in report.expiring] == ["a2", "a1", "a3"]
    assert report.expiring_total == 3
    assert report.expiring[0].dns_names == ["soon.corp.internal"]


def test_the_expiring_list_is_capped_with_its_total() -> None:
    raws = [_issued(f"r{i}", f"{i:x}", expires_in=timedelta(days=1, minutes=i)) for i in range(50)]
    report = _report(*raws, limit=5)
    assert report.expiring_total == 50
    assert [c.serial for c in report.expiring] == ["0", "1", "2", "3", "4"]


def test_the_expiry_timeline_covers_at_least_ninety_days_of_valid_certificates() -> None:
    raws = [
        _issued("r1", "a1", expires_in=timedelta(days=5)),
        _issued("r2", "a2", expires_in=timedelta(days=5, hours=1)),
        _issued("r3", "a3", expires_in=timedelta(days=89)),
        _issued("r4", "a4", expires_in=timedelta(days=200)),
    ]
    report = _report(*raws, days=7)
    assert report.timeline_days == 90
    assert [(d.day, d.count) for d in report.expiry_timeline] == [(date(2026, 6, 6), 2), (date(2026, 8, 29), 1)]
    assert _report(*raws, days=365).timeline_days == 365
    assert sum(d.count for d in _report(*raws, days=365).expiry_timeline) == 4


def test_issuance_is_counted_per_utc_day() -> None:
    late_evening_east = datetime(2026, 5, 2, 1, 30, tzinfo=timezone(timedelta(hours=3)))  # 1 May, 22:30 UTC
    report = _report(
        _issued("r1", "a1", issued=late_evening_east),
        _issued("r2", "a2", issued=datetime(2026, 5, 1, 0, 0, tzinfo=UTC)),
        _issued("r3", "a3", issued=datetime(2026, 5, 3, 23, 59, tzinfo=UTC)),
    )
    assert [(d.day, d.count) for d in report.issued_per_day] == [(date(2026, 5, 1), 2), (date(2026, 5, 3), 1)]


def test_unreadable_events_are_counted_and_skipped() -> None:
    inventory = _fold(
        b"{not json",
        b"[1, 2]",
        b'{"event_type": ["CertificateIssued"]}',
        _e("CertificateIssued", "signing", aggregate_id="r1", serial="a1"),
        _e("CertificateIssued", "signing", aggregate_id="r2", serial="a2", issuer_id="ca1", profile="p", **_times("x")),
        _e("CertificateIssued", "signing", aggregate_id="r3", serial=7, issuer_id="ca1", profile="p"),
        _e("CertificateRevoked", "revocation", aggregate_id="r1", serial="a1"),
        _issued("r4", "a4"),
        _e("ProfileApplied", "operator", aggregate_id="whatever"),
    )
    assert (inventory.events, inventory.malformed, inventory.through_seq) == (9, 7, 9)
    assert list(inventory.certificates) == [("ca1", "a4")]


def _times(value: str) -> dict[str, str]:
    return {"occurred_at": value, "not_after": value}


def test_events_from_a_producer_not_allowed_to_publish_them_are_not_counted() -> None:
    forged = _issued("r2", "a2").replace(b'"producer": "signing"', b'"producer": "requester"')
    revoked = _revoked("a1", "keyCompromise").replace(b'"revocation"', b'"operator"')
    listed = _issued("r3", "a3").replace(b'"producer": "signing"', b'"producer": ["signing"]')
    report = _report(_issued("r1", "a1"), forged, revoked, listed)
    assert (report.certificates, report.ignored, _counts(report.by_state)["valid"]) == (1, 3, 1)


def test_an_event_on_another_types_subject_is_a_forgery_and_not_counted() -> None:
    inventory = Inventory(ROOT)
    inventory.add(1, f"{ROOT}.cert.r1.requested", _issued("r1", "a1"))
    inventory.add(2, f"{ROOT}.cert.r2.issued", _issued("r1", "a2"))  # r1's certificate on r2's subject
    inventory.add(3, f"{ROOT}.cert.r3.issued", _issued("r3", "a3"))
    assert (inventory.ignored, list(inventory.certificates)) == (2, [("ca1", "a3")])


def test_a_message_over_the_bounds_is_malformed_without_being_read() -> None:
    inventory = _fold(_issued("r1", "a1", names=["n" * 100] * 3000))
    assert (inventory.malformed, inventory.certificates) == (1, {})


def test_times_out_of_range_once_in_utc_are_malformed() -> None:
    early = _e("CertificateIssued", "signing", aggregate_id="r1", serial="a1", issuer_id="ca1", profile="p")
    data = json.loads(early) | {"occurred_at": "0001-01-01T00:00:00+14:00", "not_after": "2030-01-01T00:00:00"}
    inventory = _fold(json.dumps(data).encode())
    assert (inventory.malformed, inventory.certificates) == (1, {})


def test_text_from_events_is_made_printable_and_shortened() -> None:
    report = _report(_requested("r1", "evil\x1b[31m\x00" + "x" * 500), _issued("r1", "a1"))
    requester = report.by_requester.top[0].key
    assert "\x1b" not in requester and "\x00" not in requester
    assert requester.startswith("evil\\x1b[31m\\x00") and len(requester) == TEXT_MAX


def test_a_breakdown_lists_the_largest_values_and_sums_the_rest() -> None:
    raws = [_requested(f"r{i}", f"user{i:04d}") for i in range(TOP + 20)]
    raws += [_issued(f"r{i}", f"{i:x}") for i in range(TOP + 20)]
    raws += [
        _requested("big", "user9999"),
        _issued("big", "ffff"),
        _requested("big2", "user9999"),
        _issued("big2", "fff0"),
    ]
    report = _report(*raws)
    assert len(report.by_requester.top) == TOP
    assert report.by_requester.top[0].key == "user9999"
    assert (report.by_requester.others, report.by_requester.other_keys) == (21, 21)


def test_the_answer_stays_small_for_a_hundred_thousand_certificates_of_distinct_requesters() -> None:
    inventory = Inventory(ROOT)
    long = "r" * 1000
    for i in range(100_000):
        inventory.add(2 * i + 1, f"{ROOT}.cert.q{i}.requested", _requested(f"q{i}", f"{long}{i}"))
        issued = _issued(f"q{i}", f"{i:x}", expires_in=timedelta(days=i % 60), names=["n"] * 50)
        inventory.add(2 * i + 2, f"{ROOT}.cert.q{i}.issued", issued)
    size = len(summarise(inventory, NOW, 30, 1000).model_dump_json())
    assert size < 600_000, size


def test_negative_windows_are_refused() -> None:
    try:
        summarise(Inventory(ROOT), NOW, -1, 10)
    except ValueError as exc:
        assert "must not be negative" in str(exc)
    else:
        raise AssertionError("a negative window was accepted")


# --- renderers ------------------------------------------------------------------------------

HOSTILE = '<script>alert("x")</script>'


def _hostile_report() -> ReportAnswer:
    return _report(
        _requested("r1", HOSTILE),
        _issued("r1", "a1", expires_in=timedelta(days=3), profile="=HYPERLINK(1)", names=[f"{HOSTILE}.example"]),
        _issued("r2", "a2", expires_in=timedelta(days=40), issued=NOW - timedelta(days=3)),
        _issued("r3", "a3"),
        _revoked("a3", "keyCompromise"),
        _issued("r4", "a4", expires_in=-timedelta(days=2)),
    )


def test_the_csv_parses_back_into_its_sections() -> None:
    report = _hostile_report()
    rows = list(csv.DictReader(io.StringIO(report_csv(report))))
    sections = {r["section"] for r in rows}
    assert sections == {
        "summary",
        "state",
        "issuer",
        "profile",
        "requester",
        "revoked_reason",
        "issued_per_day",
        "expiry_timeline",
        "expiring",
    }
    summary = {r["key"]: r["value"] for r in rows if r["section"] == "summary"}
    assert (summary["certificates"], summary["expiring_total"], summary["through_seq"]) == ("4", "1", "6")
    state = {r["key"]: int(r["value"]) for r in rows if r["section"] == "state"}
    assert state == {"valid": 2, "expired": 1, "revoked": 1, "superseded": 0, "destroyed": 0}
    (expiring,) = [r for r in rows if r["section"] == "expiring"]
    assert (expiring["serial"], expiring["requester"]) == ("a1", HOSTILE)
    assert datetime.fromisoformat(expiring["not_after"]) == NOW + timedelta(days=3)


def test_the_csv_keeps_spreadsheets_from_running_formulas() -> None:
    rows = list(csv.DictReader(io.StringIO(report_csv(_hostile_report()))))
    assert {r["key"] for r in rows if r["section"] == "profile"} == {"'=HYPERLINK(1)", "tls-server"}
    assert [r["profile"] for r in rows if r["section"] == "expiring"] == ["'=HYPERLINK(1)"]


def test_the_html_escapes_text_from_events() -> None:
    page = render_html(_hostile_report())
    assert "<script" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page


def test_the_html_has_every_chart_with_its_bars() -> None:
    page = render_html(_hostile_report())
    for chart in ("chart-expiry", "chart-issuance", "chart-state", "chart-revoked"):
        assert f'<svg id="{chart}"' in page, chart
    for table in ("table-issuer", "table-profile", "table-requester", "table-expiring"):
        assert f'<table id="{table}"' in page, table
    assert _bars(page, "chart-expiry") == 2  # day 3 and day 40 (the timeline spans 90 days)
    assert _bars(page, "chart-issuance") == 2  # 10 days and 3 days ago
    assert _bars(page, "chart-state") == 3  # valid, expired, revoked (none superseded or destroyed)
    assert _bars(page, "chart-revoked") == 1
    assert "through log position <b>6</b>" in page
    assert "2026-06-01 12:00:00 UTC" in page


def _bars(page: str, chart: str) -> int:
    match = re.search(rf'<svg id="{chart}".*?</svg>', page, re.S)
    assert match, chart
    return match.group(0).count('<rect class="bar"')


def test_the_html_fetches_nothing_and_runs_nothing() -> None:
    page = render_html(_hostile_report())
    assert "http://" not in page and "https://" not in page
    assert not re.search(r"\b(src|href)\s*=|url\(|@import|<script|<link|<img|<iframe", page, re.I)
    assert "default-src 'none'" in page


def test_the_html_of_an_empty_log_says_so() -> None:
    page = render_html(summarise(Inventory(ROOT), NOW))
    assert page.count('<rect class="bar"') == 0
    assert "no certificates in this period" in page


def test_json_and_csv_together_are_a_usage_error() -> None:
    result = CliRunner().invoke(app, ["audit", "report", "--json", "--csv"])
    assert result.exit_code == 2
    assert "--json or --csv" in result.output
