"""The OCSP responder core: openssl as the relying party, the response cache, and refused requests."""

from __future__ import annotations

import base64
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509 import ocsp as x509_ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pki_builders import BASE_URL, ORG, issue_leaf
from services.signing import domain as signing
from services.validation.domain import StatusRecord
from services.validation.ocsp import (
    GOOD,
    UNKNOWN,
    MalformedRequest,
    Responder,
    ResponderSet,
    ResponseCache,
    Status,
    TryLater,
    decode_get,
    parse_request,
)
from shared.pki.crypto import PrivateKey, serial_hex, signing_hash

OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="the openssl command is not installed")
# openssl checks the responder certificate and thisUpdate/nextUpdate against the real clock
REAL_NOW = datetime.now(UTC).replace(microsecond=0)
REVOKED_AT = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
PEM = serialization.Encoding.PEM
DER = serialization.Encoding.DER


@dataclass
class Pki:
    """A root, an issuing CA, its delegated responder and a leaf, also written out as PEM files."""

    root: signing.CaIdentity
    issuing: signing.CaIdentity
    issuing_key: ec.EllipticCurvePrivateKey
    responder: Responder
    leaf: x509.Certificate
    dir: Path


def _issuing_ca(ca_id: str) -> tuple[signing.CaIdentity, signing.CaIdentity, ec.EllipticCurvePrivateKey]:
    root_key, issuing_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    root = signing.CaIdentity(f"root-{ca_id}", signing.root_certificate(root_key, f"root-{ca_id}", ORG, REAL_NOW, 30))
    cert = signing.issuing_certificate(
        issuing_key.public_key(), ca_id, root, root_key, ORG, signing.Urls(BASE_URL), REAL_NOW, days=20
    )
    return root, signing.CaIdentity(ca_id, cert), issuing_key


def responder_cert(
    issuing: signing.CaIdentity,
    issuing_key: PrivateKey,
    key: PrivateKey,
    ocsp_signing: bool = True,
    days: int = 7,
) -> x509.Certificate:
    """A short-lived delegated responder certificate (id-kp-OCSPSigning, id-pkix-ocsp-nocheck)."""
    usages = [ExtendedKeyUsageOID.OCSP_SIGNING if ocsp_signing else ExtendedKeyUsageOID.CLIENT_AUTH]
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"OCSP responder {issuing.ca_id}")]))
        .issuer_name(issuing.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(REAL_NOW - timedelta(minutes=1))
        .not_valid_after(REAL_NOW + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.OCSPNoCheck(), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuing.cert.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
        .sign(issuing_key, signing_hash(issuing_key))
    )


def _make_pki(directory: Path, ca_id: str, responder_key: PrivateKey) -> Pki:
    root, issuing, issuing_key = _issuing_ca(ca_id)
    responder = Responder(ca_id, issuing.cert, responder_cert(issuing, issuing_key, responder_key), responder_key)
    leaf = issue_leaf(issuing, issuing_key, ["www.example.internal"], now=REAL_NOW, validity_days=10)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "issuer.pem").write_bytes(issuing.cert.public_bytes(PEM))
    (directory / "cert.pem").write_bytes(leaf.public_bytes(PEM))
    (directory / "chain.pem").write_bytes(root.cert.public_bytes(PEM) + issuing.cert.public_bytes(PEM))
    return Pki(root, issuing, issuing_key, responder, leaf, directory)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return _make_pki(tmp_path_factory.mktemp("pki"), "issuing-t", ec.generate_private_key(ec.SECP256R1()))


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return _make_pki(tmp_path_factory.mktemp("other"), "issuing-o", ec.generate_private_key(ec.SECP256R1()))


class FakeStatuses:
    """The caller's status lookup: a dict, UNKNOWN for serials it never heard of."""

    def __init__(self) -> None:
        self.by_serial: dict[tuple[str, str], Status] = {}
        self.asked: list[tuple[str, str]] = []

    def set(self, pki: Pki, status: Status) -> None:
        self.by_serial[(pki.issuing.ca_id, serial_hex(pki.leaf))] = status

    def __call__(self, ca_id: str, serial: str) -> Status:
        self.asked.append((ca_id, serial))
        return self.by_serial.get((ca_id, serial), UNKNOWN)


@pytest.fixture
def statuses(pki: Pki) -> FakeStatuses:
    fake = FakeStatuses()
    fake.set(pki, GOOD)
    return fake


@pytest.fixture
def responders(pki: Pki, statuses: FakeStatuses) -> ResponderSet:
    return ResponderSet([pki.responder], statuses)


def _run(args: list[str], cwd: Path, ok: bool = True) -> str:
    assert OPENSSL is not None
    result = subprocess.run([OPENSSL, *args], cwd=cwd, capture_output=True, text=True, check=False, timeout=30)
    assert (result.returncode == 0) == ok, result.stdout + result.stderr
    return result.stdout + result.stderr


def openssl_request(pki: Pki, nonce: bool = True, digest: str = "-sha1", name: str = "req.der") -> bytes:
    """What `openssl ocsp` sends for the leaf (SHA-1 CertID and a nonce unless told otherwise)."""
    args = ["ocsp", digest, "-issuer", "issuer.pem", "-cert", "cert.pem", "-reqout", name]
    _run([*args, *([] if nonce else ["-no_nonce"])], pki.dir)
    return (pki.dir / name).read_bytes()


def openssl_status(pki: Pki, response: bytes, digest: str = "-sha1") -> str:
    """openssl's verdict on the leaf's status: signature, chain, CertID match and status times.

    `-no_nonce`: with -cert, openssl builds a request of its own (ignoring -reqin) with a new nonce."""
    (pki.dir / "resp.der").write_bytes(response)
    args = ["ocsp", "-respin", "resp.der", "-CAfile", "chain.pem", "-resp_text", "-no_nonce"]
    return _run([*args, digest, "-issuer", "issuer.pem", "-cert", "cert.pem"], pki.dir)


def openssl_nonce_check(pki: Pki, response: bytes, request: str, ok: bool = True) -> str:
    """openssl's verdict on a response to the request in file `request`, its nonce included."""
    (pki.dir / "resp.der").write_bytes(response)
    args = ["ocsp", "-reqin", request, "-respin", "resp.der", "-CAfile", "chain.pem", "-resp_text"]
    return _run(args, pki.dir, ok)


def _verified_with_nonce(pki: Pki, response: bytes, cert_status: str, request: str = "req.der") -> None:
    output = openssl_nonce_check(pki, response, request)
    assert "Response verify OK" in output
    assert f"Cert Status: {cert_status}" in output
    assert "WARNING" not in output  # "no nonce in response" among others


def _single(response: bytes) -> x509_ocsp.OCSPResponse:
    parsed = x509_ocsp.load_der_ocsp_response(response)
    assert parsed.response_status is x509_ocsp.OCSPResponseStatus.SUCCESSFUL
    return parsed


def _status(response: bytes) -> x509_ocsp.OCSPResponseStatus:
    return x509_ocsp.load_der_ocsp_response(response).response_status


def _nonce(response: bytes) -> bytes | None:
    for extension in _single(response).extensions:
        if isinstance(extension.value, x509.OCSPNonce):
            return extension.value.nonce
    return None


def _request(cert: x509.Certificate, issuer: x509.Certificate, nonce: bytes | None = None) -> bytes:
    builder = x509_ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA256())
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder.build().public_bytes(DER)


# openssl as the relying party


@needs_openssl
@pytest.mark.parametrize("key_type", ["p256", "ed25519", "rsa"])
def test_openssl_verifies_a_good_response_and_its_nonce(
    key_type: str, tmp_path: Path, rsa_2048_key: rsa.RSAPrivateKey
) -> None:
    keys: dict[str, Callable[[], PrivateKey]] = {
        "p256": lambda: ec.generate_private_key(ec.SECP256R1()),
        "ed25519": ed25519.Ed25519PrivateKey.generate,
        "rsa": lambda: rsa_2048_key,
    }
    pki = _make_pki(tmp_path, "issuing-k", keys[key_type]())
    fake = FakeStatuses()
    fake.set(pki, GOOD)
    response = ResponderSet([pki.responder], fake).respond(openssl_request(pki), REAL_NOW)
    _verified_with_nonce(pki, response, "good")
    output = openssl_status(pki, response)
    assert "Response verify OK" in output
    assert "cert.pem: good" in output
    assert "WARNING" not in output  # "Status times invalid" among others


@needs_openssl
def test_openssl_verifies_a_good_response_without_a_nonce(pki: Pki, responders: ResponderSet) -> None:
    response = responders.respond(openssl_request(pki, nonce=False), REAL_NOW)
    output = openssl_status(pki, response)
    assert "Response verify OK" in output
    assert "cert.pem: good" in output
    assert "WARNING" not in output
    assert "Cert Status: good" in openssl_nonce_check(pki, response, "req.der")  # no nonce asked, none given


@needs_openssl
def test_openssl_shows_the_revocation_time_and_reason(
    pki: Pki, statuses: FakeStatuses, responders: ResponderSet
) -> None:
    statuses.set(pki, Status("revoked", REVOKED_AT, x509.ReasonFlags.key_compromise))
    response = responders.respond(openssl_request(pki), REAL_NOW)
    _verified_with_nonce(pki, response, "revoked")
    output = openssl_status(pki, response)
    assert "Response verify OK" in output
    assert "cert.pem: revoked" in output
    assert "Reason: keyCompromise" in output
    assert "Revocation Time: Mar  4 05:06:07 2026 GMT" in output


@needs_openssl
def test_openssl_reports_a_serial_the_issuer_never_issued_as_unknown(
    pki: Pki, statuses: FakeStatuses, responders: ResponderSet
) -> None:
    statuses.by_serial.clear()
    response = responders.respond(openssl_request(pki), REAL_NOW)
    _verified_with_nonce(pki, response, "unknown")
    output = openssl_status(pki, response)
    assert "Response verify OK" in output
    assert "cert.pem: unknown" in output


@needs_openssl
def test_openssl_accepts_a_sha256_cert_id(pki: Pki, responders: ResponderSet) -> None:
    response = responders.respond(openssl_request(pki, digest="-sha256", name="req256.der"), REAL_NOW)
    assert isinstance(_single(response).hash_algorithm, hashes.SHA256)
    _verified_with_nonce(pki, response, "good", request="req256.der")
    output = openssl_status(pki, response, digest="-sha256")
    assert "Response verify OK" in output
    assert "cert.pem: good" in output


@needs_openssl
def test_openssl_refuses_a_response_to_another_nonce(pki: Pki, responders: ResponderSet) -> None:
    response = responders.respond(openssl_request(pki, name="first.der"), REAL_NOW)
    openssl_request(pki, name="second.der")
    assert "Nonce Verify error" in openssl_nonce_check(pki, response, "second.der", ok=False)


def test_the_response_names_the_responder_by_key_hash_and_carries_its_certificate(
    pki: Pki, responders: ResponderSet
) -> None:
    response = _single(responders.respond(_request(pki.leaf, pki.issuing.cert), REAL_NOW))
    assert response.responder_name is None
    key_hash = x509.SubjectKeyIdentifier.from_public_key(pki.responder.key.public_key()).digest  # SHA-1 of the key
    assert response.responder_key_hash == key_hash
    assert response.certificates == [pki.responder.cert]
    assert response.this_update_utc == REAL_NOW - timedelta(minutes=1)
    assert response.next_update_utc == REAL_NOW + timedelta(hours=1)


# the cache


def test_no_nonce_requests_share_one_signed_response(pki: Pki, responders: ResponderSet) -> None:
    request = _request(pki.leaf, pki.issuing.cert)
    first = responders.respond(request, REAL_NOW)
    second = responders.respond(request, REAL_NOW + timedelta(minutes=5))
    assert first == second
    stats = responders.stats()
    assert (stats.hits, stats.misses, stats.signed, stats.entries) == (1, 1, 1, 1)


def test_a_status_change_signs_afresh(pki: Pki, statuses: FakeStatuses, responders: ResponderSet) -> None:
    request = _request(pki.leaf, pki.issuing.cert)
    good = responders.respond(request, REAL_NOW)
    statuses.set(pki, Status("revoked", REVOKED_AT, x509.ReasonFlags.superseded))
    revoked = responders.respond(request, REAL_NOW)
    assert revoked != good
    assert _single(revoked).certificate_status is x509_ocsp.OCSPCertStatus.REVOKED
    assert _single(revoked).revocation_reason is x509.ReasonFlags.superseded
    assert responders.respond(request, REAL_NOW) == revoked


def test_invalidate_drops_the_cached_responses_of_a_serial(pki: Pki, responders: ResponderSet) -> None:
    first = responders.respond(_request(pki.leaf, pki.issuing.cert), REAL_NOW)
    assert responders.invalidate(pki.issuing.ca_id, "0x" + serial_hex(pki.leaf).upper()) == 1
    assert len(responders.cache) == 0
    assert responders.respond(_request(pki.leaf, pki.issuing.cert), REAL_NOW) != first


def test_a_response_is_re_signed_once_half_its_validity_has_passed(pki: Pki, responders: ResponderSet) -> None:
    request = _request(pki.leaf, pki.issuing.cert)
    first = responders.respond(request, REAL_NOW)
    assert responders.respond(request, REAL_NOW + timedelta(minutes=29)) == first
    later = responders.respond(request, REAL_NOW + timedelta(minutes=30))
    assert later != first
    assert _single(later).next_update_utc == REAL_NOW + timedelta(minutes=90)


def test_nonce_requests_are_signed_afresh_echo_the_nonce_and_are_not_cached(pki: Pki, responders: ResponderSet) -> None:
    first = responders.respond(_request(pki.leaf, pki.issuing.cert, nonce=b"n" * 16), REAL_NOW)
    second = responders.respond(_request(pki.leaf, pki.issuing.cert, nonce=b"m" * 32), REAL_NOW)
    assert (_nonce(first), _nonce(second)) == (b"n" * 16, b"m" * 32)
    stats = responders.stats()
    assert (stats.signed, stats.hits, stats.misses, stats.entries) == (2, 0, 0, 0)


def test_a_nonce_over_32_octets_is_ignored_as_rfc_8954_allows(pki: Pki, responders: ResponderSet) -> None:
    cached = responders.respond(_request(pki.leaf, pki.issuing.cert), REAL_NOW)
    long_nonce = responders.respond(_request(pki.leaf, pki.issuing.cert, nonce=b"x" * 33), REAL_NOW)
    assert long_nonce == cached
    assert _nonce(long_nonce) is None


def test_the_cache_evicts_the_least_recently_used_beyond_its_bound(pki: Pki, statuses: FakeStatuses) -> None:
    leaves = [issue_leaf(pki.issuing, pki.issuing_key, [f"h{i}.example.internal"], now=REAL_NOW) for i in range(3)]
    for leaf in leaves:
        statuses.by_serial[(pki.issuing.ca_id, serial_hex(leaf))] = GOOD
    responders = ResponderSet([pki.responder], statuses, cache=ResponseCache(max_entries=2))
    requests = [_request(leaf, pki.issuing.cert) for leaf in leaves]
    responders.respond(requests[0], REAL_NOW)
    responders.respond(requests[1], REAL_NOW)
    responders.respond(requests[0], REAL_NOW)  # now the most recently used
    responders.respond(requests[2], REAL_NOW)  # evicts requests[1]
    stats = responders.stats()
    assert (stats.entries, stats.evictions, stats.hits) == (2, 1, 1)
    responders.respond(requests[0], REAL_NOW)
    assert responders.stats().hits == 2
    responders.respond(requests[1], REAL_NOW)
    assert responders.stats().signed == 4


def test_unknown_serials_are_not_cached(pki: Pki, statuses: FakeStatuses, responders: ResponderSet) -> None:
    statuses.by_serial.clear()
    request = _request(pki.leaf, pki.issuing.cert)
    responders.respond(request, REAL_NOW)
    responders.respond(request, REAL_NOW)
    assert (responders.stats().signed, len(responders.cache)) == (2, 0)


def test_sha1_and_sha256_cert_ids_get_their_own_responses(pki: Pki, responders: ResponderSet) -> None:
    sha1 = x509_ocsp.OCSPRequestBuilder().add_certificate(pki.leaf, pki.issuing.cert, hashes.SHA1()).build()
    for _ in range(2):
        old = responders.respond(sha1.public_bytes(DER), REAL_NOW)
        new = responders.respond(_request(pki.leaf, pki.issuing.cert), REAL_NOW)
    assert isinstance(_single(old).hash_algorithm, hashes.SHA1)
    assert isinstance(_single(new).hash_algorithm, hashes.SHA256)
    assert responders.invalidate(pki.issuing.ca_id, serial_hex(pki.leaf)) == 2


def test_a_renewed_responder_replaces_the_cached_responses(pki: Pki, responders: ResponderSet) -> None:
    request = _request(pki.leaf, pki.issuing.cert)
    old = responders.respond(request, REAL_NOW)
    key = ec.generate_private_key(ec.SECP256R1())
    renewed = Responder(pki.issuing.ca_id, pki.issuing.cert, responder_cert(pki.issuing, pki.issuing_key, key), key)
    responders.add(renewed)
    new = responders.respond(request, REAL_NOW)
    assert new != old
    assert _single(new).certificates == [renewed.cert]


def test_next_update_never_outlives_the_responder_certificate(pki: Pki, responders: ResponderSet) -> None:
    almost = pki.responder.not_after - timedelta(minutes=10)
    response = responders.respond(_request(pki.leaf, pki.issuing.cert), almost)
    assert _single(response).next_update_utc == pki.responder.not_after


def test_an_expired_responder_certificate_gets_try_later(pki: Pki, responders: ResponderSet) -> None:
    response = responders.respond(_request(pki.leaf, pki.issuing.cert), pki.responder.not_after)
    assert _status(response) is x509_ocsp.OCSPResponseStatus.TRY_LATER


def test_prepare_and_answer_serve_a_caller_that_looks_up_the_status_itself(pki: Pki) -> None:
    responders = ResponderSet([pki.responder])
    request, responder = responders.prepare(_request(pki.leaf, pki.issuing.cert))
    assert (responder.ca_id, request.serial) == (pki.issuing.ca_id, serial_hex(pki.leaf))
    response = responders.answer(request, responder, GOOD, REAL_NOW)
    assert _single(response).certificate_status is x509_ocsp.OCSPCertStatus.GOOD
    with pytest.raises(TypeError, match="prepare"):
        responders.respond(_request(pki.leaf, pki.issuing.cert), REAL_NOW)


def test_the_lookup_gets_the_issuer_and_the_serial_in_hex(
    pki: Pki, statuses: FakeStatuses, responders: ResponderSet
) -> None:
    responders.respond(_request(pki.leaf, pki.issuing.cert), REAL_NOW)
    assert statuses.asked == [(pki.issuing.ca_id, serial_hex(pki.leaf))]


def test_an_unspecified_reason_is_left_out(pki: Pki, statuses: FakeStatuses, responders: ResponderSet) -> None:
    statuses.set(pki, Status("revoked", REVOKED_AT, x509.ReasonFlags.unspecified))
    response = _single(responders.respond(_request(pki.leaf, pki.issuing.cert), REAL_NOW))
    assert (response.revocation_time_utc, response.revocation_reason) == (REVOKED_AT, None)


# refused requests


def test_garbage_is_a_malformed_request(responders: ResponderSet) -> None:
    assert _status(responders.respond(b"\x30\x03garbage", REAL_NOW)) is x509_ocsp.OCSPResponseStatus.MALFORMED_REQUEST
    assert responders.stats().refused == 1


def test_a_negative_serial_is_malformed(pki: Pki, responders: ResponderSet) -> None:
    der = _request(pki.leaf, pki.issuing.cert)
    serial = pki.leaf.serial_number.to_bytes(20, "big")
    negative = der.replace(b"\x02\x14" + serial, b"\x02\x14\xd4" + serial[1:])
    assert negative != der
    with pytest.raises(MalformedRequest, match="negative"):
        parse_request(negative)
    assert _status(responders.respond(negative, REAL_NOW)) is x509_ocsp.OCSPResponseStatus.MALFORMED_REQUEST


@needs_openssl
def test_a_request_for_two_certificates_is_malformed(pki: Pki, responders: ResponderSet) -> None:
    _run(["ocsp", "-issuer", "issuer.pem", "-cert", "cert.pem", "-cert", "cert.pem", "-reqout", "two.der"], pki.dir)
    response = responders.respond((pki.dir / "two.der").read_bytes(), REAL_NOW)
    assert _status(response) is x509_ocsp.OCSPResponseStatus.MALFORMED_REQUEST


def test_before_any_responder_every_request_gets_try_later(pki: Pki, other_pki: Pki) -> None:
    responders = ResponderSet([])
    with pytest.raises(TryLater):
        responders.prepare(_request(other_pki.leaf, other_pki.issuing.cert))


def test_an_expected_issuer_gets_try_later_until_its_responder_arrives(pki: Pki, other_pki: Pki) -> None:
    responders = ResponderSet([pki.responder])
    responders.expect(other_pki.issuing.ca_id, other_pki.issuing.cert)
    with pytest.raises(TryLater, match=other_pki.issuing.ca_id) as early:
        responders.prepare(_request(other_pki.leaf, other_pki.issuing.cert))
    assert _status(early.value.response) is x509_ocsp.OCSPResponseStatus.TRY_LATER
    responders.add(other_pki.responder)
    assert responders.prepare(_request(other_pki.leaf, other_pki.issuing.cert))[1] is other_pki.responder
    assert responders.responder(other_pki.issuing.ca_id) is other_pki.responder
    assert responders.responder("no-such-ca") is None


def test_a_request_about_another_issuer_is_unauthorized(
    other_pki: Pki, statuses: FakeStatuses, responders: ResponderSet
) -> None:
    response = responders.respond(_request(other_pki.leaf, other_pki.issuing.cert), REAL_NOW)
    assert _status(response) is x509_ocsp.OCSPResponseStatus.UNAUTHORIZED
    assert statuses.asked == []


def test_one_set_serves_several_issuers(pki: Pki, other_pki: Pki, statuses: FakeStatuses) -> None:
    statuses.set(other_pki, Status("revoked", REVOKED_AT, x509.ReasonFlags.key_compromise))
    responders = ResponderSet([pki.responder, other_pki.responder], statuses)
    mine = _single(responders.respond(_request(pki.leaf, pki.issuing.cert), REAL_NOW))
    other = _single(responders.respond(_request(other_pki.leaf, other_pki.issuing.cert), REAL_NOW))
    assert (mine.certificate_status, other.certificate_status) == (
        x509_ocsp.OCSPCertStatus.GOOD,
        x509_ocsp.OCSPCertStatus.REVOKED,
    )
    assert other.certificates == [other_pki.responder.cert]


def test_a_critical_unknown_request_extension_is_malformed(pki: Pki) -> None:
    unknown = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.55555.1"), b"\x05\x00")
    der = (
        x509_ocsp.OCSPRequestBuilder()
        .add_certificate(pki.leaf, pki.issuing.cert, hashes.SHA256())
        .add_extension(unknown, critical=True)
        .build()
        .public_bytes(DER)
    )
    with pytest.raises(MalformedRequest, match=r"critical extension 1\.3\.6\.1\.4\.1\.55555\.1"):
        parse_request(der)


def test_decode_get_undoes_url_escapes_and_missing_padding(pki: Pki) -> None:
    der = _request(pki.leaf, pki.issuing.cert, nonce=b"\xfb\xff" * 8)  # base64 with + and /
    text = base64.b64encode(der).decode()
    assert "+" in text or "/" in text
    escaped = text.replace("+", "%2B").replace("/", "%2F").replace("=", "%3D")
    assert decode_get(escaped) == der
    assert decode_get(text.rstrip("=")) == der
    assert decode_get(base64.urlsafe_b64encode(der).decode()) == der


def test_decode_get_refuses_what_is_not_base64() -> None:
    with pytest.raises(MalformedRequest, match="base64"):
        decode_get("not*base64")


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text())
def test_decode_get_raises_nothing_but_malformed_request(text: str) -> None:
    try:
        decode_get(text)
    except MalformedRequest:
        pass


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_damage_to_a_request_still_gets_an_ocsp_response(
    pki: Pki, responders: ResponderSet, data: st.DataObject
) -> None:
    der = bytearray(_request(pki.leaf, pki.issuing.cert, nonce=b"n" * 16))
    for _ in range(data.draw(st.integers(1, 4))):
        der[data.draw(st.integers(0, len(der) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(der)))
    response = responders.respond(bytes(der[:cut]) + data.draw(st.binary(max_size=8)), REAL_NOW)
    assert _status(response) in set(x509_ocsp.OCSPResponseStatus)


# responders and statuses


def test_a_responder_certificate_without_ocsp_signing_is_refused(pki: Pki) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = responder_cert(pki.issuing, pki.issuing_key, key, ocsp_signing=False)
    with pytest.raises(ValueError, match="lacks id-kp-OCSPSigning"):
        Responder(pki.issuing.ca_id, pki.issuing.cert, cert, key)


def test_a_responder_key_that_is_not_the_certificates_is_refused(pki: Pki) -> None:
    with pytest.raises(ValueError, match="not its certificate's key"):
        Responder(pki.issuing.ca_id, pki.issuing.cert, pki.responder.cert, ec.generate_private_key(ec.SECP256R1()))


def test_a_responder_certificate_from_another_ca_is_refused(pki: Pki, other_pki: Pki) -> None:
    with pytest.raises(ValueError, match="not issued by that CA"):
        Responder(pki.issuing.ca_id, pki.issuing.cert, other_pki.responder.cert, other_pki.responder.key)


def test_status_from_a_read_model_record() -> None:
    revoked = StatusRecord("1f", "revoked", REVOKED_AT, "keyCompromise")
    assert Status.from_record(revoked) == Status("revoked", REVOKED_AT, x509.ReasonFlags.key_compromise)
    assert Status.from_record(StatusRecord("1f", "good")) == GOOD
    assert Status.from_record(None) == UNKNOWN


def test_a_revoked_status_needs_an_aware_time() -> None:
    with pytest.raises(ValueError, match="timezone-aware revoked_at"):
        Status("revoked", REVOKED_AT.replace(tzinfo=None))
    with pytest.raises(ValueError, match="no revocation time"):
        Status("good", REVOKED_AT)
