"""The whole lifecycle with the five services as separate processes, one of them killed mid-way,
checked with the `certbus` CLI and with openssl as the relying party."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509

from deploy.local.devstack import SERVICES
from harness import Harness, eventually, run_cli
from shared.pki.crypto import build_csr, generate_key

pytestmark = pytest.mark.e2e
OPENSSL = shutil.which("openssl")


def stream_count(msgs: list) -> dict[str, int]:  # type: ignore[type-arg]
    counts: dict[str, int] = {}
    for m in msgs:
        counts[m.subject] = counts.get(m.subject, 0) + 1
    return counts


@pytest.mark.skipif(OPENSSL is None, reason="openssl is the relying party here")
async def test_lifecycle_survives_a_killed_service_and_loses_nothing(harness: Harness, tmp_path: Path) -> None:
    h = harness
    await asyncio.to_thread(h.spawn_all)
    await h.register_provisioner()
    await h.apply_profiles()
    await h.register_ocsp_provisioner()  # as `make run` does: validation is ready once it has its responder
    await h.wait_ready()
    assert (await h.cli("health")).returncode == 0

    # Enroll with the CLI: key generated locally, files written, openssl accepts the chain.
    out = tmp_path / "a"
    enrolled = await h.cli(
        "enroll", "--token", h.token("a.corp.internal"), "--san", "a.corp.internal", "--out", str(out), "--json"
    )
    assert enrolled.returncode == 0, enrolled.stderr
    serial_a = json.loads(enrolled.stdout)["serial"]
    assert (out / "key.pem").stat().st_mode & 0o777 == 0o600
    verify = subprocess.run(
        [OPENSSL, "verify", "-CAfile", str(out / "chain.pem"), str(out / "cert.pem")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert verify.returncode == 0 and "OK" in verify.stdout, verify.stderr

    # Every service serves /healthz (alive), /readyz (ready: 200 now) and Prometheus /metrics.
    for name, port in h.http_ports.items():
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            assert json.loads(r.read())["service"] == name
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r:
            assert r.status == 200 and json.loads(r.read())["missing"] == []
    with urllib.request.urlopen(f"http://127.0.0.1:{h.http_ports['enrollment']}/metrics", timeout=5) as r:
        metrics = r.read().decode()
    assert 'certbus_events_consumed_total{event_type="EnrollmentRequested",service="enrollment-requests"}' in metrics

    # Kill signing (SIGKILL) while a request is in flight; restart it; the request is still served.
    h.procs["signing"].stop(kill=True)
    approvals = len(await h.stream_messages(f"{h.root}.cert.*.approved"))

    async def approved() -> bool:
        return len(await h.stream_messages(f"{h.root}.cert.*.approved")) > approvals

    async with h.client() as c:
        key = generate_key("ec-p256")
        pending = asyncio.create_task(
            c.enroll(build_csr(key, ["b.corp.internal"]).decode(), h.token("b.corp.internal"), timeout=60)
        )
        await eventually(approved, timeout=30)  # in flight: enrollment approved it, only signing is missing
        assert not pending.done()
        h.spawn("signing")
        issued_b = await pending
    assert issued_b.dns_names == ["b.corp.internal"]

    # Kill and restart validation and audit too: they catch up from their durable consumers.
    for name in ("validation", "audit"):
        h.procs[name].stop(kill=True)
    for name in ("validation", "audit"):
        await asyncio.to_thread(h.spawn(name).wait_healthy, 60)

    assert (await h.cli("validate", str(out / "cert.pem"))).returncode == 0
    revoked = await h.cli("revoke", serial_a, "--reason", "keyCompromise", "--key", str(out / "key.pem"))
    assert revoked.returncode == 0, revoked.stderr
    after = await h.cli("validate", str(out / "cert.pem"))
    assert after.returncode == 1 and "revoked" in after.stdout

    # The CRL the certificate names (its shard's), fetched by the CLI, verifies under the issuing CA
    # and lists the serial.
    crl_file = tmp_path / "x.crl"

    async def crl_lists_a() -> bool:
        if (await h.cli("crl", "--cert", str(out / "cert.pem"), "--out", str(crl_file))).returncode != 0:
            return False
        text = subprocess.run(
            [
                OPENSSL,
                "crl",
                "-inform",
                "DER",
                "-in",
                str(crl_file),
                "-CAfile",
                str(out / "chain.pem"),
                "-noout",
                "-text",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        return text.returncode == 0 and "verify OK" in text.stderr + text.stdout and serial_a.upper() in text.stdout

    await eventually(crl_lists_a, timeout=10, interval=0.3)

    # A relying party that knows nothing of NATS: the CRL at the URL written in the certificate.
    cert_a = x509.load_pem_x509_certificate((out / "cert.pem").read_bytes())
    dp = cert_a.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    url = dp[0].full_name[0].value  # type: ignore[index,union-attr]
    with urllib.request.urlopen(url, timeout=5) as r:
        assert r.headers["Content-Type"] == "application/pkix-crl"
        (tmp_path / "dp.crl").write_bytes(r.read())
    checked = subprocess.run(
        [
            OPENSSL,
            "verify",
            "-crl_check",
            "-CAfile",
            str(out / "chain.pem"),
            "-CRLfile",
            str(tmp_path / "dp.crl"),
            str(out / "cert.pem"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode != 0 and "certificate revoked" in checked.stdout + checked.stderr

    history = await h.cli("audit", "history", serial_a, "--json")
    assert history.returncode == 0, history.stderr
    events = json.loads(history.stdout)["events"]
    types = [e["event_type"] for e in events]
    # Who did what: the requester asked, policy approved, signing issued, the revoker is named twice.
    actors = [e["actor"] for e in events]
    assert actors[:3] == [events[0]["event"]["requester"], "enrollment (policy)", "signing"]
    assert actors[3] == actors[4] == events[3]["event"]["requested_by"]
    # The requester named is the identity the CLI authenticated as (`tests`), written in by the
    # service that admitted the request from the ingress stream.
    assert (events[0]["event"]["requester"], events[0]["event"]["producer"]) == ("tests", "enrollment")
    assert (events[3]["event"]["requested_by"], events[3]["event"]["producer"]) == ("tests", "revocation")
    table = await asyncio.to_thread(run_cli, {**h.cli_env(), "COLUMNS": "250"}, "audit", "history", serial_a)
    assert table.returncode == 0 and "enrollment (policy)" in table.stdout and "keyCompromise" in table.stdout
    assert types == [
        "EnrollmentRequested",
        "EnrollmentApproved",
        "CertificateIssued",
        "RevocationRequested",
        "CertificateRevoked",
    ]

    # Nothing lost, nothing duplicated: one of each event per request, nothing parked anywhere,
    # and the audit archive holds every stream message, chained without a gap.
    counts = stream_count(await h.stream_messages(f"{h.root}.cert.>"))
    for request_id in {s.split(".")[2] for s in counts}:
        for verb in ("requested", "approved", "issued"):
            assert counts.get(f"{h.root}.cert.{request_id}.{verb}") == 1, (request_id, verb, counts)
    pool = await h.db()
    for name in SERVICES:
        assert await pool.fetchval(f"SELECT count(*) FROM {name}.parked") == 0, name
        assert await pool.fetchval(f"SELECT count(*) FROM {name}.outbox WHERE published_at IS NULL") == 0, name
    # a and b, and validation's OCSP responder certificate
    assert await pool.fetchval("SELECT count(*) FROM signing.issuances") == 3

    async def audit_caught_up() -> bool:
        last = len(await h.stream_messages(f"{h.root}.>"))
        row = await pool.fetchrow("SELECT seq, (SELECT count(*) FROM audit.archive) AS n FROM audit.chain_head")
        return row["seq"] == last == row["n"]

    await eventually(audit_caught_up, timeout=45)  # a message unacked when audit was killed comes back after ack_wait
