"""Poison messages for audit: a valid event of every type with one field, top-level or nested,
replaced by a value of the wrong type (a list, an object, null, a number, a huge string, JSON nested
past the bounds, a NUL, a lone surrogate), removed, or joined by another; a valid event on another
type's subject; bytes that are no JSON object at all. Each must be describable into columns the
archive can store, flagged by the checks (or be a valid event after all), and neither the checks,
the report nor a history entry may raise over a log full of them."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_audit_samples import ROOT, event, sample, subject_of

from services.audit import checks, domain, handlers, report, store
from shared.contract.binding import bind
from shared.contract.events import EVENT_CLASSES, AuditFindingRaised, event_from

NOW = datetime(2026, 1, 2, tzinfo=UTC)
CODES = {"oversize", "malformed", "unknown_type", "subject_mismatch"}
POISON = settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
Path = tuple[str | int, ...]


def _nested(depth: int) -> Any:
    value: Any = "bottom"
    for level in range(depth):
        value = [value] if level % 2 else {"n": value}
    return value


SPECIAL_TEXT = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "\ud800",
    "x\udcff",
    "\x1b[2J[/red]",
    "0001-01-01T00:00:00+14:00",
    "9999-12-31T23:59:59-14:00",
    "2026-01-01T00:00:00",
    "ff" * 40,
    "zz",
    "-" * 65,
    "pki.cert.r1.issued",
    "0b7e4f3c-6c7e-4b9a-9a39-5a3e0c7c1f00",
    "9" * 5000,
    "x" * 50_000,
    "y" * 300_000,
]
HOSTILE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**256), max_value=2**256),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(SPECIAL_TEXT),
    st.lists(st.integers(), max_size=4),
    st.dictionaries(st.text(max_size=8), st.integers() | st.none(), max_size=3),
    st.integers(min_value=1, max_value=120).map(_nested),
)


def _paths(value: Any, prefix: Path = ()) -> list[Path]:
    """Every path to a value inside a JSON object, top-level and nested."""
    found: list[Path] = []
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else []
    for key, child in items:
        found.append((*prefix, key))
        found += _paths(child, (*prefix, key))
    return found


def _parent(data: Any, path: Path) -> Any:
    for key in path[:-1]:
        data = data[key]
    return data


@st.composite
def mutated_events(draw: st.DrawFn) -> tuple[str, bytes]:
    """A valid event of any type on its own subject, then one field replaced, removed or added."""
    kind = draw(st.sampled_from(sorted(EVENT_CLASSES)))
    data = sample(kind)
    subject = subject_of(event(kind))
    path = draw(st.sampled_from(_paths(data)))
    parent = _parent(data, path)
    how = draw(st.sampled_from(["replace", "remove", "add"]))
    if how == "replace":
        parent[path[-1]] = draw(HOSTILE)
    elif how == "remove":
        del parent[path[-1]]
    else:
        target = parent if isinstance(parent, dict) else data
        target[draw(st.text(max_size=20) | st.sampled_from(SPECIAL_TEXT[:7]))] = draw(HOSTILE)
    return subject, json.dumps(data).encode()


@st.composite
def misplaced_events(draw: st.DrawFn) -> tuple[str, bytes]:
    """A valid event on another type's subject (or on a subject no type has)."""
    kind, other = draw(st.sampled_from(sorted(EVENT_CLASSES))), draw(st.sampled_from(sorted(EVENT_CLASSES)))
    subject = draw(st.sampled_from([subject_of(event(other)), f"{ROOT}.cert.x.nothing", f"{ROOT}.a.b", "other.x.y.z"]))
    raw = event(kind)
    return (subject, raw) if subject != subject_of(raw) else (f"{ROOT}.junk.x.y", raw)


NOT_OBJECTS = st.sampled_from(
    [b"", b"{not json", b"[1, 2]", b'"text"', b"null", b"\xff\xfe\x00", b"[" * 10_000 + b"]" * 10_000, b"z" * 200_000]
) | st.binary(max_size=64)
POISONS = st.one_of(
    mutated_events(),
    misplaced_events(),
    st.tuples(st.sampled_from([f"{ROOT}.cert.r1.requested", f"{ROOT}.junk.a\x00b.x"]), NOT_OBJECTS),
)

# A small consistent log around the poison: what comes after it must still be checked and counted.
BEFORE = [event("CaCreated"), event("EnrollmentRequested"), event("EnrollmentApproved")]
AFTER = [event("CertificateIssued"), event("CertificateRevoked")]
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_SERIAL = re.compile(r"[0-9a-f]{1,64}")


def _storable(text: str | None, limit: int | None = None) -> bool:
    """Text a Postgres text column and a JSON encoder take: no NUL, no lone surrogate, bounded."""
    if text is None:
        return True
    text.encode("utf-8")
    return "\x00" not in text and (limit is None or len(text) <= limit)


def _assert_storable(d: domain.Described) -> None:
    assert d.event_type in EVENT_CLASSES or d.event_type in CODES, d.event_type
    assert d.aggregate_id is None or _ID.fullmatch(d.aggregate_id)
    assert d.cert_id is None or _ID.fullmatch(d.cert_id)
    assert _storable(d.producer, 128)
    assert all(s is None or _SERIAL.fullmatch(s) for s in (d.serial, *d.related_serials))
    assert d.occurred_at is None or d.occurred_at.utcoffset() == timedelta(0)
    assert _storable(d.subject)
    assert d.problem is None or (d.problem.check in CODES and _storable(d.problem.detail, 2048))


def _log(subject: str, raw: bytes) -> list[tuple[int, str, bytes]]:
    """The poison at position 4 of a consistent log."""
    messages = [(subject_of(r), r) for r in BEFORE] + [(subject, raw)] + [(subject_of(r), r) for r in AFTER]
    return [(seq, s, r) for seq, (s, r) in enumerate(messages, start=1)]


@POISON
@given(POISONS)
def test_a_poison_message_is_archived_flagged_and_harmless(message: tuple[str, bytes]) -> None:
    subject, raw = message
    described = domain.describe(subject, raw, root=ROOT)
    _assert_storable(described)
    reading = domain.read(subject, ROOT, raw)
    if reading.problem is None:  # the change left a valid event on its own subject: harmless
        assert event_from(bind(subject, ROOT, raw)).subject(ROOT) == subject
    else:
        assert described.problem == reading.problem
        if reading.data is None:  # not an event on its subject: nothing of it is indexed
            assert (described.aggregate_id, described.producer, described.serial) == (None, None, None)

    log = _log(subject, raw)
    checker = checks.check_all(log, ROOT)
    if reading.problem is not None:
        assert (reading.problem.check, 4) in {(f.check, f.stream_seq) for f in checker.findings}
    assert all(_storable(f.detail, 2048) for f in checker.findings)
    assert checker.events == len(log)
    assert ("ca1", "a1") in {(issuer, r.serial) for issuer, rs in checker.revocations.items() for r in rs}

    inventory = report.inventory_of(log, ROOT)
    assert inventory.events == len(log)
    assert ("ca1", "a1") in inventory.certificates  # the certificate after the poison still counts
    report.summarise(inventory, NOW).model_dump_json()

    for finding in checker.findings:  # what audit would raise binds cleanly: no finding about a finding
        raised = AuditFindingRaised(
            aggregate_id=f"{finding.check}-{finding.stream_seq}",
            occurred_at=NOW,
            correlation_id=f"check-{finding.check}-{finding.stream_seq}",
            producer="audit",
            check=finding.check,
            stream_seq=finding.stream_seq,
            detail=finding.detail,
        )
        payload = raised.model_dump_json().encode()
        assert domain.read(raised.subject(ROOT), ROOT, payload).problem is None

    row = {
        "stream_seq": 4,
        "event_type": described.event_type,
        "subject": described.subject,
        "producer": described.producer,
        "occurred_at": described.occurred_at,
        "raw": raw,
    }
    json.loads(handlers._entry(row).model_dump_json())  # a history or findings entry of it


@settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(POISONS, min_size=1, max_size=40))
def test_a_log_full_of_poison_is_checked_and_reported_without_raising(messages: list[tuple[str, bytes]]) -> None:
    log = [(seq, subject, raw) for seq, (subject, raw) in enumerate(messages, start=1)]
    checker = checks.check_all(log, ROOT)
    bad = {seq for seq, subject, raw in log if domain.read(subject, ROOT, raw).problem is not None}
    assert bad <= {f.stream_seq for f in checker.findings if f.check in CODES}
    inventory = report.inventory_of(log, ROOT)
    answer = report.summarise(inventory, NOW)
    assert answer.events == len(log)
    assert inventory.malformed + inventory.ignored >= len(bad) - sum(
        1 for seq, s, r in log if seq in bad and domain.read(s, ROOT, r).data is not None
    )
    answer.model_dump_json()


def test_three_thousand_mutated_enrollment_requests_leave_the_report_working() -> None:
    """The report of the issue: many EnrollmentRequested bodies with fields replaced by lists, nulls,
    huge strings, removed or added, one of them naming a list as its producer."""
    values: list[Any] = [[], ["a"], {}, None, 7, "x" * 10_000, _nested(40), "\x00", "\ud800"]
    fields = list(sample("EnrollmentRequested"))
    log = []
    for i in range(3000):
        data = sample("EnrollmentRequested", aggregate_id=f"r{i}")
        field = fields[i % len(fields)]
        if i % 3 == 0:
            data.pop(field)
        else:
            data[field] = values[i % len(values)]
        log.append((i + 1, f"{ROOT}.cert.r{i}.requested", json.dumps(data).encode()))
    log.append((3001, f"{ROOT}.cert.r0.requested", event("EnrollmentRequested", producer=["requester"])))
    inventory = report.inventory_of(log, ROOT)
    answer = report.summarise(inventory, NOW)
    assert answer.events == 3001 and answer.certificates == 0
    checker = checks.check_all(log, ROOT)
    assert checker.events == 3001


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(POISONS, min_size=1, max_size=20))
def test_a_replay_writes_the_rows_the_live_archive_writes(messages: list[tuple[str, bytes]]) -> None:
    """A replay skips the class validation and, confirming an archive, indexes nothing: what it
    writes must still be the live archive's rows (indexed), or their compared columns with the bytes'
    digest (not)."""
    log = [(seq, subject, raw) for seq, (subject, raw) in enumerate(messages, start=1)]
    live = store.rows_of(log, ROOT, domain.GENESIS)
    replayed = store.rows_of(log, ROOT, domain.GENESIS, validate=False)
    assert (replayed.rows, replayed.refs, replayed.head) == (live.rows, live.refs, live.head)
    unbound = {
        seq: p for seq, p in live.problems.items() if domain.read(log[seq - 1][1], ROOT, log[seq - 1][2]).data is None
    }
    assert replayed.problems == unbound  # only the class's refusals go unreported
    compared = store.digest_rows(log, domain.GENESIS)
    columns = [store.ARCHIVE_COLUMNS.index(c) for c in ("stream_seq", "subject", "hash", "subject_exact")]
    assert [[r[i] for i in columns] for r in compared.rows] == [[r[i] for i in columns] for r in live.rows]
    raw = store.ARCHIVE_COLUMNS.index("raw")
    assert [r[raw] for r in compared.rows] == [hashlib.sha256(r[raw]).digest() for r in live.rows]
    assert compared.head == live.head and compared.refs == []
