"""OCSP served by validation with a delegated responder certificate that validation enrolled for
through the normal enrollment path; `openssl ocsp` is the relying party."""

from __future__ import annotations

import asyncio
import base64
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID

from clock import TestClock
from deploy.local.devstack import SERVICES
from harness import Harness, eventually
from services.validation import store as validation_store
from shared.contract.events import CertificateIssued, CertificateRevoked, EnrollmentApproved

OPENSSL = shutil.which("openssl")
pytestmark = pytest.mark.skipif(OPENSSL is None, reason="the openssl command is not installed")
PEM = serialization.Encoding.PEM
OCSP_REQUEST = "application/ocsp-request"
DER = serialization.Encoding.DER


@dataclass
class Files:
    """A certificate, its issuer and the root, as openssl reads them, in one directory."""

    dir: Path
    cert: x509.Certificate
    issuer: x509.Certificate


def _http(
    url: str, data: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


async def fetch(
    url: str, data: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """An HTTP request from a thread (the services run in this event loop)."""
    return await asyncio.to_thread(_http, url, data, headers)


async def openssl(*args: str, cwd: Path, ok: bool = True) -> str:
    assert OPENSSL is not None
    result = await asyncio.to_thread(
        subprocess.run, [OPENSSL, *args], cwd=cwd, capture_output=True, text=True, check=False, timeout=60
    )
    assert (result.returncode == 0) == ok, result.stdout + result.stderr
    return result.stdout + result.stderr


def base_url(h: Harness) -> str:
    return f"http://127.0.0.1:{h.http_ports['validation']}"


async def write_files(h: Harness, issued: CertificateIssued, directory: Path) -> Files:
    """cert.pem, issuer.pem and root.pem, the CA certificates fetched from validation's /ca URLs."""
    directory.mkdir(parents=True, exist_ok=True)
    cert = x509.load_pem_x509_certificate(issued.cert_pem.encode())
    _, _, issuer_der = await fetch(f"{base_url(h)}/ca/{issued.issuer_id}.crt")
    issuer = x509.load_der_x509_certificate(issuer_der)
    aia = issuer.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    root_url = next(d.access_location.value for d in aia if d.access_method == AuthorityInformationAccessOID.CA_ISSUERS)
    _, _, root_der = await fetch(root_url)
    (directory / "cert.pem").write_bytes(cert.public_bytes(PEM))
    (directory / "issuer.pem").write_bytes(issuer.public_bytes(PEM))
    (directory / "root.pem").write_bytes(x509.load_der_x509_certificate(root_der).public_bytes(PEM))
    return Files(directory, cert, issuer)


def ocsp_request(cert: x509.Certificate, issuer: x509.Certificate) -> bytes:
    """A SHA-1 CertID request without a nonce (what RFC 5019 clients send by GET)."""
    builder = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1())
    return builder.build().public_bytes(DER)


async def post(h: Harness, request: bytes, port: int | None = None) -> ocsp.OCSPResponse:
    url = f"http://127.0.0.1:{port or h.http_ports['validation']}/ocsp"
    status, headers, body = await fetch(url, request, {"Content-Type": "application/ocsp-request"})
    assert (status, headers["Content-Type"]) == (200, "application/ocsp-response")
    return ocsp.load_der_ocsp_response(body)


async def responder_ready(h: Harness, files: Files, port: int | None = None, timeout: float = 60.0) -> None:
    """Wait until validation answers about `files.cert` with a signed response (not tryLater)."""

    async def signed() -> bool:
        response = await post(h, ocsp_request(files.cert, files.issuer), port)
        return response.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL

    await eventually(signed, timeout=timeout, interval=0.2)


async def openssl_ask(files: Files, url: str, *extra: str) -> str:
    """`openssl ocsp` by POST about cert.pem, trusting only root.pem."""
    args = ["ocsp", "-issuer", "issuer.pem", "-cert", "cert.pem", "-url", url, "-CAfile", "root.pem", "-resp_text"]
    return await openssl(*args, *extra, cwd=files.dir)


@pytest.fixture
async def ocsp_stack(stack: Harness) -> Harness:
    """The stack with validation's provisioner registered, as `make run` does."""
    await stack.register_ocsp_provisioner()
    return stack


async def test_openssl_reports_good_then_revoked_with_the_reason(ocsp_stack: Harness, tmp_path: Path) -> None:
    issued = await ocsp_stack.enroll("www.corp.internal")
    files = await write_files(ocsp_stack, issued, tmp_path / "www")
    await responder_ready(ocsp_stack, files)

    output = await openssl_ask(files, f"{base_url(ocsp_stack)}/ocsp")
    assert "Response verify OK" in output
    assert "cert.pem: good" in output
    assert "WARNING" not in output

    async with ocsp_stack.client("operator") as c:
        await c.revoke_as_operator(issued.serial, "keyCompromise", "tests")
    output = await openssl_ask(files, f"{base_url(ocsp_stack)}/ocsp")
    assert "Response verify OK" in output
    assert "cert.pem: revoked" in output
    assert "Reason: keyCompromise" in output
    assert "Revocation Time:" in output


async def test_the_ocsp_url_in_the_certificate_is_the_one_that_answers(ocsp_stack: Harness, tmp_path: Path) -> None:
    issued = await ocsp_stack.enroll("aia.corp.internal")
    files = await write_files(ocsp_stack, issued, tmp_path / "aia")
    url = (await openssl("x509", "-noout", "-ocsp_uri", "-in", "cert.pem", cwd=files.dir)).strip()
    assert url == f"{base_url(ocsp_stack)}/ocsp"
    await responder_ready(ocsp_stack, files)
    output = await openssl_ask(files, url)
    assert "Response verify OK" in output
    assert "cert.pem: good" in output
    # as the README's quickstart does it, with the chain.pem that `certbus enroll` writes
    (files.dir / "chain.pem").write_text(issued.chain_pem)
    args = ["ocsp", "-issuer", "chain.pem", "-cert", "cert.pem", "-url", url, "-CAfile", "chain.pem"]
    output = await openssl(*args, cwd=files.dir)
    assert "Response verify OK" in output
    assert "cert.pem: good" in output


async def test_a_serial_the_issuer_never_issued_is_unknown(ocsp_stack: Harness, tmp_path: Path) -> None:
    files = await write_files(ocsp_stack, await ocsp_stack.enroll("known.corp.internal"), tmp_path / "known")
    await responder_ready(ocsp_stack, files)
    args = ["ocsp", "-issuer", "issuer.pem", "-serial", "0x1234abcd", "-url", f"{base_url(ocsp_stack)}/ocsp"]
    output = await openssl(*args, "-CAfile", "root.pem", "-resp_text", cwd=files.dir)
    assert "Response verify OK" in output
    assert "0x1234abcd: unknown" in output


async def test_get_answers_with_rfc5019_caching_headers_and_openssl_verifies_it(
    ocsp_stack: Harness, tmp_path: Path
) -> None:
    issued = await ocsp_stack.enroll("get.corp.internal")
    files = await write_files(ocsp_stack, issued, tmp_path / "get")
    await responder_ready(ocsp_stack, files)
    await openssl(
        "ocsp", "-issuer", "issuer.pem", "-cert", "cert.pem", "-no_nonce", "-reqout", "req.der", cwd=files.dir
    )
    encoded = base64.b64encode((files.dir / "req.der").read_bytes()).decode()
    for path in (encoded, urllib.parse.quote(encoded, safe="")):  # as is ('/' in the path) and %-escaped
        status, headers, body = await fetch(f"{base_url(ocsp_stack)}/ocsp/{path}")
        assert (status, headers["Content-Type"]) == (200, "application/ocsp-response")
        response = ocsp.load_der_ocsp_response(body)
        assert response.certificate_status is ocsp.OCSPCertStatus.GOOD
        assert response.next_update_utc is not None
        max_age = int(headers["Cache-Control"].split("max-age=")[1].split(",")[0])
        assert 0 < max_age <= (response.next_update_utc - datetime.now(UTC)).total_seconds() + 1
        assert "public" in headers["Cache-Control"]
        assert headers["Last-Modified"] == response.this_update_utc.strftime("%a, %d %b %Y %H:%M:%S GMT")
        assert headers["Expires"] == response.next_update_utc.strftime("%a, %d %b %Y %H:%M:%S GMT")
        assert headers["ETag"]
    _, _, metrics = await fetch(f"{base_url(ocsp_stack)}/metrics")
    assert 'certbus_ocsp_responses_total{outcome="good"}' in metrics.decode()
    (files.dir / "resp.der").write_bytes(body)
    args = ["ocsp", "-respin", "resp.der", "-issuer", "issuer.pem", "-cert", "cert.pem", "-no_nonce"]
    output = await openssl(*args, "-CAfile", "root.pem", "-resp_text", cwd=files.dir)
    assert "Response verify OK" in output
    assert "cert.pem: good" in output


async def test_a_get_with_a_nonce_is_signed_afresh_and_not_cacheable(ocsp_stack: Harness, tmp_path: Path) -> None:
    files = await write_files(ocsp_stack, await ocsp_stack.enroll("nonce.corp.internal"), tmp_path / "nonce")
    await responder_ready(ocsp_stack, files)
    await openssl("ocsp", "-issuer", "issuer.pem", "-cert", "cert.pem", "-reqout", "req.der", cwd=files.dir)
    encoded = urllib.parse.quote(base64.b64encode((files.dir / "req.der").read_bytes()).decode(), safe="")
    _, headers, body = await fetch(f"{base_url(ocsp_stack)}/ocsp/{encoded}")
    assert headers["Cache-Control"] == "no-store"
    (files.dir / "resp.der").write_bytes(body)
    args = ["ocsp", "-reqin", "req.der", "-respin", "resp.der", "-issuer", "issuer.pem", "-CAfile", "root.pem"]
    output = await openssl(*args, "-resp_text", cwd=files.dir)
    assert "Response verify OK" in output
    assert "WARNING" not in output  # the nonce was echoed


async def test_the_responder_certificate_came_through_enrollment_and_signs_ocsp_only(
    ocsp_stack: Harness, tmp_path: Path
) -> None:
    files = await write_files(ocsp_stack, await ocsp_stack.enroll("r.corp.internal"), tmp_path / "r")
    await responder_ready(ocsp_stack, files)
    response = await post(ocsp_stack, ocsp_request(files.cert, files.issuer))
    [responder] = response.certificates
    responder.verify_directly_issued_by(files.issuer)
    assert list(responder.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.OCSP_SIGNING
    ]
    assert not responder.extensions.get_extension_for_class(x509.OCSPNoCheck).critical
    assert responder.not_valid_after_utc - responder.not_valid_before_utc <= timedelta(days=2, minutes=1)
    serial = format(responder.serial_number, "x")
    issued = [
        CertificateIssued.model_validate_json(m.data)
        for m in await ocsp_stack.stream_messages(f"{ocsp_stack.root}.cert.*.issued")
    ]
    mine = [e for e in issued if e.serial == serial]
    assert [(e.profile, e.dns_names) for e in mine] == [("ocsp-responder", ["validation.ocsp.internal"])]
    approvals = await ocsp_stack.stream_messages(f"{ocsp_stack.root}.cert.{mine[0].aggregate_id}.approved")
    assert [EnrollmentApproved.model_validate_json(m.data).requester for m in approvals] == ["validation"]
    approved = EnrollmentApproved.model_validate_json(approvals[0].data)
    assert approved.provisioner_id == "ocsp-validation"  # one approval, by validation's own provisioner
    keys = list((ocsp_stack.tmp / "validation" / "ocsp").glob("*.key.pem"))
    assert keys and all(k.stat().st_mode & 0o077 == 0 for k in keys)
    provisioner_key = ocsp_stack.tmp / "validation" / "ocsp-provisioner.key.pem"
    assert provisioner_key.stat().st_mode & 0o077 == 0


async def test_every_replica_answers_revoked_after_one_of_them_applied_the_revocation(
    ocsp_stack: Harness, tmp_path: Path
) -> None:
    """Only one replica consumes each event, so only it drops its cached responses; the other's
    cached "good" is never served, because the status is read from the database per request."""
    await ocsp_stack.start_replica("validation", "validation-2")
    port_2 = ocsp_stack.runtime("validation-2").settings.http_port
    issued = await ocsp_stack.enroll("both.corp.internal")
    files = await write_files(ocsp_stack, issued, tmp_path / "both")
    request = ocsp_request(files.cert, files.issuer)
    for port in (None, port_2):
        await responder_ready(ocsp_stack, files, port)
        for _ in range(2):  # signed, then served from the replica's cache
            assert (await post(ocsp_stack, request, port)).certificate_status is ocsp.OCSPCertStatus.GOOD
    async with ocsp_stack.client("operator") as c:
        await c.revoke_as_operator(issued.serial, "superseded", "tests")
    for port in (None, port_2):
        response = await post(ocsp_stack, request, port)
        assert response.certificate_status is ocsp.OCSPCertStatus.REVOKED
        assert response.revocation_reason is x509.ReasonFlags.superseded


async def test_a_revocation_committed_before_a_request_is_never_answered_good_by_a_replica_that_cached_good(
    ocsp_stack: Harness, tmp_path: Path
) -> None:
    """The revocation is committed straight into the read model (as whichever replica consumed it
    would): neither replica's consumer runs, yet both answer revoked at once, never their cached good."""
    await ocsp_stack.start_replica("validation", "validation-2")
    port_2 = ocsp_stack.runtime("validation-2").settings.http_port
    issued = await ocsp_stack.enroll("committed.corp.internal")
    files = await write_files(ocsp_stack, issued, tmp_path / "committed")
    request = ocsp_request(files.cert, files.issuer)
    for port in (None, port_2):
        await responder_ready(ocsp_stack, files, port)
        for _ in range(2):  # signed, then served from the replica's memory
            assert (await post(ocsp_stack, request, port)).certificate_status is ocsp.OCSPCertStatus.GOOD
    revoked = CertificateRevoked.model_construct(
        serial=issued.serial,
        aggregate_id=issued.aggregate_id,
        issuer_id=issued.issuer_id,
        revoked_at=datetime.now(UTC),
        reason="keyCompromise",
    )
    pool = await ocsp_stack.db()
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL search_path TO validation")
        await validation_store.apply_revoked(conn, revoked)
    for port in (None, port_2):
        response = await post(ocsp_stack, request, port)
        assert response.certificate_status is ocsp.OCSPCertStatus.REVOKED
        assert response.revocation_reason is x509.ReasonFlags.key_compromise


async def test_until_the_responder_is_registered_ocsp_answers_try_later(stack: Harness, tmp_path: Path) -> None:
    files = await write_files(stack, await stack.enroll("early.corp.internal"), tmp_path / "early")
    response = await post(stack, ocsp_request(files.cert, files.issuer))
    assert response.response_status is ocsp.OCSPResponseStatus.TRY_LATER
    await stack.register_ocsp_provisioner()
    await responder_ready(stack, files)


async def test_bad_posts_are_refused(ocsp_stack: Harness) -> None:
    url = f"{base_url(ocsp_stack)}/ocsp"
    status, _, _ = await fetch(url, b"\x30\x00", {"Content-Type": "text/plain"})
    assert status == 415
    status, _, _ = await fetch(url, b"\x30" * 5000, {"Content-Type": "application/ocsp-request"})
    assert status == 413
    status, _, body = await fetch(url, b"\x30\x03abc", {"Content-Type": "application/ocsp-request"})
    assert status == 200
    assert ocsp.load_der_ocsp_response(body).response_status is ocsp.OCSPResponseStatus.MALFORMED_REQUEST
    status, headers, body = await fetch(f"{url}/not*base64")
    assert (status, headers["Cache-Control"]) == (200, "no-store")
    assert ocsp.load_der_ocsp_response(body).response_status is ocsp.OCSPResponseStatus.MALFORMED_REQUEST


def _responder_of(response: ocsp.OCSPResponse) -> x509.Certificate:
    assert response.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL
    [responder] = response.certificates
    return responder


async def _responder_issuances(h: Harness) -> list[CertificateIssued]:
    issued = [CertificateIssued.model_validate_json(m.data) for m in await h.stream_messages(f"{h.root}.cert.*.issued")]
    return [e for e in issued if e.profile == "ocsp-responder"]


async def test_the_responder_renews_its_certificate_when_a_third_of_its_life_is_left(
    harness: Harness, tmp_path: Path
) -> None:
    clock = TestClock()  # running: the responder's loop waits on it (openssl, outside, keeps the real time)
    harness.clocks = dict.fromkeys(SERVICES, clock)
    harness.overrides["validation"] = {"ocsp_check_interval_s": 0.2}
    await harness.start()
    await harness.register_provisioner()
    await harness.apply_profiles()
    await harness.register_ocsp_provisioner()
    files = await write_files(harness, await harness.enroll("renew.corp.internal"), tmp_path / "renew")
    await responder_ready(harness, files)
    request = ocsp_request(files.cert, files.issuer)
    first = _responder_of(await post(harness, request))
    assert first.not_valid_after_utc - first.not_valid_before_utc == timedelta(days=2)

    clock.advance(timedelta(days=1, hours=7))  # 17 h of 48 left: more than a third, nothing happens
    # The responder's check reads the clock once a pass: its second read from here on starts the
    # pass after one that judged the certificate at this time.
    seen = clock.reads_by("ocsp-responder")
    await eventually(lambda: asyncio.sleep(0, clock.reads_by("ocsp-responder") >= seen + 2))
    assert _responder_of(await post(harness, request)).serial_number == first.serial_number

    clock.advance(timedelta(hours=1, minutes=1))  # under a third left: renewed within a check
    moved = timedelta(days=1, hours=8, minutes=1)

    async def renewed() -> ocsp.OCSPResponse | None:
        response = await post(harness, request)
        return response if _responder_of(response).serial_number != first.serial_number else None

    response = await eventually(renewed, timeout=30, interval=0.2)
    second = _responder_of(response)
    assert second.not_valid_before_utc >= first.not_valid_before_utc + moved - timedelta(minutes=1)
    assert second.public_key() != first.public_key()  # a fresh key, not the old one re-certified
    public_key = second.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    assert response.signature_hash_algorithm is not None
    public_key.verify(response.signature, response.tbs_response_bytes, ec.ECDSA(response.signature_hash_algorithm))
    assert response.certificate_status is ocsp.OCSPCertStatus.GOOD
    assert len(await _responder_issuances(harness)) == 2
    stored = sorted(p.name for p in (harness.tmp / "validation" / "ocsp").iterdir())
    assert len(stored) == 4  # key and certificate of each


async def test_a_restarted_validation_serves_its_stored_responder_without_enrolling_again(
    ocsp_stack: Harness, tmp_path: Path
) -> None:
    files = await write_files(ocsp_stack, await ocsp_stack.enroll("again.corp.internal"), tmp_path / "again")
    await responder_ready(ocsp_stack, files)
    request = ocsp_request(files.cert, files.issuer)
    before = _responder_of(await post(ocsp_stack, request))
    await ocsp_stack.stop("validation")
    await ocsp_stack.start("validation")
    await responder_ready(ocsp_stack, files)
    assert _responder_of(await post(ocsp_stack, request)).serial_number == before.serial_number
    assert len(await _responder_issuances(ocsp_stack)) == 1


async def test_a_revoked_responder_certificate_is_replaced_with_a_new_key(ocsp_stack: Harness, tmp_path: Path) -> None:
    files = await write_files(ocsp_stack, await ocsp_stack.enroll("rr.corp.internal"), tmp_path / "rr")
    await responder_ready(ocsp_stack, files)
    request = ocsp_request(files.cert, files.issuer)
    first = _responder_of(await post(ocsp_stack, request))
    async with ocsp_stack.client("operator") as c:
        await c.revoke_as_operator(format(first.serial_number, "x"), "keyCompromise", "tests")

    async def replaced() -> x509.Certificate | None:
        current = _responder_of(await post(ocsp_stack, request))
        return current if current.serial_number != first.serial_number else None

    second = await eventually(replaced, timeout=30, interval=0.2)
    assert second.public_key() != first.public_key()


async def test_validation_also_serves_under_the_public_base_urls_path(harness: Harness) -> None:
    port = harness.http_ports["validation"]
    harness.overrides["validation"] = {"public_base_url": f"http://127.0.0.1:{port}/pki/"}
    await harness.start("signing", "validation")
    for path in ("/pki/ocsp", "/ocsp"):
        status, _, body = await fetch(f"{base_url(harness)}{path}", b"\x30\x03abc", {"Content-Type": OCSP_REQUEST})
        assert status == 200
        assert ocsp.load_der_ocsp_response(body).response_status is ocsp.OCSPResponseStatus.MALFORMED_REQUEST
    status, _, _ = await fetch(f"{base_url(harness)}/pki/ocsp/MAA=")
    assert status == 200
