"""Properties of the pure enrollment domain and of event parsing, over hostile input (hypothesis).

Whatever a requester sends, `load_csr` + `review` return a Reason, an Approval or reasons, never raise; and
whatever they approve is inside the profile. Whatever bytes reach `parse_event`, it returns an event or raises
pydantic.ValidationError. A final plain test checks the properties were not vacuous (some CSRs were approved,
some events parsed).
"""

from __future__ import annotations

import json
import warnings
from collections import Counter
from typing import Any

import hostile
import pydantic
import pytest
from cryptography import x509
from hypothesis import HealthCheck, currently_in_test_context, event, example, given, settings, target
from hypothesis import strategies as st
from test_events import SAMPLES

from pki_builders import claims_for
from services.enrollment.domain import Approval, Names, load_csr, requested_names, review
from shared.contract.events import EVENT_TYPES, Event, parse_event
from shared.contract.profiles import Profile, dns_problem, email_problem, ip_problem, key_problem
from shared.contract.reasons import Reason

PROFILE = Profile(
    name="svc",
    usage="both",
    dns_suffixes=[hostile.SUFFIX],
    dns_patterns=["*"],  # one-label names too: hypothesis favours them, so approvals are not rare
    allow_wildcards=True,
    allow_ip_sans=True,
    ip_ranges=["0.0.0.0/1", "::/1"],  # half of every address family: both sides of the range check are reached
    allow_emails=True,
    max_sans=8,  # random_name_csrs asks for up to 10 names
    max_validity_days=90,
)
BASE = hostile.csr_for(
    hostile.process_key(),
    [f"app.{hostile.SUFFIX}", f"api.{hostile.SUFFIX}"],
    ips=["10.0.0.1"],
    emails=[f"ops@{hostile.SUFFIX}"],
)
CODES = {
    "csr_malformed",
    "csr_signature_invalid",
    "key_unsupported",
    "key_weak",
    "key_type_not_allowed",
    "key_blocked",
    "names_missing",
    "too_many_names",
    "name_invalid",
    "name_not_in_profile",
    "wildcard_not_allowed",
    "ip_not_allowed",
    "email_not_allowed",
    "name_type_not_allowed",
    "cn_not_in_sans",
    "extension_not_allowed",
    "validity_too_long",
    "validity_invalid",
    "profile_not_allowed",
    "name_not_allowed",
}
CSR_SETTINGS = settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
SEEN: Counter[str] = Counter()  # what the properties met, checked by the last test


def _event(label: str) -> None:
    if currently_in_test_context():  # hypothesis statistics (--hypothesis-show-statistics)
        event(label)


def _review(pem: str, validity_days: int | None, strategy: str) -> Approval | list[Reason] | Reason:
    """load_csr, then review with a token that allows every name the CSR asks for, checking the outcome."""
    SEEN[f"{strategy}: examples"] += 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a CN over 64 characters makes cryptography warn
        csr = load_csr(pem)
        if isinstance(csr, Reason):
            assert csr.code == "csr_malformed"
            _event("not loaded")
            return csr
        SEEN[f"{strategy}: reviewed"] += 1
        names = requested_names(csr)
        allowed = [] if isinstance(names, Reason) else [*names.dns, *names.ips, *names.emails]
        outcome = review(csr, claims_for(allowed or [f"app.{hostile.SUFFIX}"], PROFILE.name), PROFILE, validity_days)
        if isinstance(outcome, Approval):
            SEEN[f"{strategy}: approved"] += 1
            _event("approved")
            _check_approval(csr, outcome, names)
        else:
            assert outcome, "review returned neither an approval nor a reason"
            assert all(isinstance(r, Reason) for r in outcome)
            assert {r.code for r in outcome} <= CODES, {r.code for r in outcome} - CODES
            for code in sorted({r.code for r in outcome}):
                _event(f"refused: {code}")
    return outcome


def _check_approval(csr: x509.CertificateSigningRequest, approval: Approval, names: object) -> None:
    """Everything approved is inside the profile and was asked for by a CSR signed by its own key."""
    for name in approval.dns_names:
        assert dns_problem(PROFILE, name) is None, name
    for ip in approval.ip_addresses:
        assert ip_problem(PROFILE, ip) is None, ip
    for email in approval.emails:
        assert email_problem(PROFILE, email) is None, email
    total = len(approval.dns_names) + len(approval.ip_addresses) + len(approval.emails)
    assert 1 <= len(approval.dns_names) and total <= PROFILE.max_sans
    assert key_problem(PROFILE, csr.public_key()) is None
    assert csr.is_signature_valid is True
    assert 1 <= approval.validity_days <= PROFILE.max_validity_days
    # exactly the CSR's own names, each once, and a common name (if any) among them
    assert not isinstance(names, Reason)
    assert approval.dns_names == list(dict.fromkeys(names.dns))  # type: ignore[attr-defined]
    assert list(approval.ip_addresses) == list(dict.fromkeys(names.ips))  # type: ignore[attr-defined]
    assert list(approval.emails) == list(dict.fromkeys(names.emails))  # type: ignore[attr-defined]
    common_names = [a.value for a in csr.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]
    assert set(common_names) <= {*approval.dns_names, *approval.ip_addresses}


VALIDITY = st.one_of(st.none(), st.integers(-2, 120))
# Found by the search (2026-12-05): an x400Address in the subjectAltName, a name type the
# cryptography library refuses to decode (UnsupportedGeneralNameType, not a ValueError).
X400_ADDRESS_CSR = (
    "-----BEGIN CERTIFICATE REQUEST-----\n"
    "MIIBHTCBxQIBADAXMRUwEwYDVQQDDAxhcHAuc3ZjLnRlc3QwWTATBgcqhkjOPQIB\n"
    "BggqhkjOPQMBBwNCAARcRstPJeYlavCHSGjja0lolIbYFsuKkVKuw1RR3xpmErrG\n"
    "ITirJjbE742/6Vhc4lxXwRIxDNvScBgmEjqbCXnsoEwwSgYJKoZIhvcNAQkOMT0w\n"
    "OzA5BgNVHREEMjAwggxhcHAuc3ZjLnRlc3SCDGFwaS5zdmMudGVzdKMECgAAAYEM\n"
    "b3BzQHN2Yy50ZXN0MAoGCCqGSM49BAMCA0cAMEQCIEO9LlW2fpx/lN4oQBG7CLMi\n"
    "DAs1sDRLwTVJm8MwJ5v4AiBm1iTSNislYyclkgOQ/IJmeXq0/rTj3DqA/dTbbJ8c\n"
    "Qw==\n"
    "-----END CERTIFICATE REQUEST-----\n"
)


@CSR_SETTINGS
@given(hostile.mutated_csrs(BASE), VALIDITY)
@example(X400_ADDRESS_CSR, None)
def test_review_of_mutated_csrs_never_raises_and_approves_only_what_the_profile_allows(
    pem: str, validity_days: int | None
) -> None:
    _review(pem, validity_days, "mutated")


@CSR_SETTINGS
@given(hostile.random_name_csrs(), VALIDITY)
def test_review_of_random_name_csrs_never_raises_and_approves_only_what_the_profile_allows(
    pem: str, validity_days: int | None
) -> None:
    _review(pem, validity_days, "random names")
    # Steer the search towards CSRs with fewer problems, so that approvals (the interesting case) do happen.
    target(-float(_badness(pem, validity_days)))


def _badness(pem: str, validity_days: int | None) -> int:
    """How far a loadable CSR is from approval: each bad name, name too many, missing DNS name, bad CN and
    bad validity counts one (review stops at too_many_names and names_missing, which would trap the search)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        csr = load_csr(pem)
        names = None if isinstance(csr, Reason) else requested_names(csr)
        if not isinstance(names, Names):
            return 100
        bad = sum(dns_problem(PROFILE, n) is not None for n in names.dns)
        bad += sum(ip_problem(PROFILE, ip) is not None for ip in names.ips)
        bad += sum(email_problem(PROFILE, e) is not None for e in names.emails)
        bad += max(0, len(names.dns) + len(names.ips) + len(names.emails) - PROFILE.max_sans) + (not names.dns)
        try:
            common_names = [a.value for a in csr.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]  # type: ignore[union-attr]
        except ValueError:
            return bad + 1
    bad += sum(cn not in names.dns and cn not in names.ips for cn in common_names)
    return bad + (validity_days is not None and not 1 <= validity_days <= PROFILE.max_validity_days)


def test_the_base_csr_is_approved() -> None:
    assert isinstance(_review(BASE, None, "base"), Approval)


# --- events -------------------------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
EVENT_NAMES = [cls.__name__ for cls in EVENT_TYPES]
SAMPLE_JSON = [json.loads(e.model_dump_json()) for e in SAMPLES.values()]
FIELD_NAMES = sorted({key for sample in SAMPLE_JSON for key in sample})


@st.composite
def _random_payloads(draw: st.DrawFn) -> str | bytes:
    kind = draw(st.sampled_from(["bytes", "json", "typed"]))
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "json":
        return json.dumps(draw(JSON_VALUES))
    fields = draw(st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=10), JSON_VALUES, max_size=12))
    return json.dumps({**fields, "event_type": draw(st.sampled_from(EVENT_NAMES))})


def _mutate_value(draw: st.DrawFn, value: Any, depth: int = 0) -> Any:
    """`value` with one thing changed somewhere inside it."""
    if isinstance(value, dict) and value and depth < 3 and (depth == 0 or draw(st.booleans())):
        key = draw(st.sampled_from(sorted(value)))
        action = draw(st.sampled_from(["delete", "replace", "recurse", "add"]))
        if action == "delete":
            return {k: v for k, v in value.items() if k != key}
        if action == "add":
            return {**value, draw(st.text(max_size=10)): draw(JSON_VALUES)}
        if action == "recurse":
            return {**value, key: _mutate_value(draw, value[key], depth + 1)}
        return {**value, key: draw(JSON_VALUES)}
    if isinstance(value, list) and value and depth < 3 and draw(st.booleans()):
        at = draw(st.integers(0, len(value) - 1))
        return [*value[:at], _mutate_value(draw, value[at], depth + 1), *value[at + 1 :]]
    if isinstance(value, str) and value and draw(st.booleans()):
        at = draw(st.integers(0, len(value)))
        return value[:at] + draw(st.text(max_size=3)) + value[at + draw(st.integers(0, 3)) :]
    if isinstance(value, int) and not isinstance(value, bool) and draw(st.booleans()):
        return value + draw(st.integers(-(2**70), 2**70))
    return draw(JSON_VALUES)


@st.composite
def _mutated_event_json(draw: st.DrawFn) -> str | bytes:
    data = draw(st.sampled_from(SAMPLE_JSON))
    for _ in range(draw(st.integers(1, 3))):
        data = _mutate_value(draw, data)
    text = json.dumps(data)
    if not draw(st.integers(0, 3)) == 0:
        return text
    raw = bytearray(text.encode())  # one draw in four also damages the bytes
    at = draw(st.integers(0, len(raw)))
    raw[at : at + draw(st.integers(0, 4))] = draw(st.binary(max_size=4))
    return bytes(raw)


def _parse(payload: str | bytes, strategy: str) -> None:
    try:
        parsed = parse_event(payload)
    except pydantic.ValidationError:
        SEEN[f"{strategy}: refused"] += 1
        _event("refused")
        return
    SEEN[f"{strategy}: parsed"] += 1
    _event(f"parsed {type(parsed).__name__}")
    assert isinstance(parsed, Event) and type(parsed) in EVENT_TYPES
    assert parse_event(parsed.model_dump_json()) == parsed


@settings(max_examples=300, deadline=None, database=None)
@given(_random_payloads())
def test_parse_event_of_random_payloads_parses_or_raises_validation_error(payload: str | bytes) -> None:
    _parse(payload, "random events")


@settings(max_examples=300, deadline=None, database=None)
@given(_mutated_event_json())
def test_parse_event_of_mutated_events_parses_or_raises_validation_error(payload: str | bytes) -> None:
    _parse(payload, "mutated events")


# --- not vacuous --------------------------------------------------------------------------------


def test_the_properties_were_not_vacuous() -> None:
    """Runs last in this module: the properties above met the cases they are about."""
    if not SEEN["random names: examples"] or not SEEN["mutated: examples"] or not SEEN["mutated events: parsed"]:
        pytest.skip("the property tests did not all run in this session")
    assert SEEN["random names: approved"] >= 1, SEEN
    assert SEEN["random names: reviewed"] > SEEN["random names: approved"], SEEN
    assert SEEN["mutated: reviewed"] >= 1, SEEN  # some mutants load and are judged, not only refused by load_csr
    assert SEEN["mutated events: parsed"] >= 1 and SEEN["mutated events: refused"] >= 1, SEEN
    assert SEEN["random events: refused"] >= 1, SEEN
